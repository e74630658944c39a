"""Run the fuzz harnesses (``fuzz/fuzz_<name>.py``) with atheris, one subprocess each, one after another.

    python fuzz/run.py [--seconds N | --runs N] [--results FILE] [harness ...]

Each harness (every ``fuzz/fuzz_*.py``) starts from its seed corpus (``fuzz/corpus/<name>/``, read
only) plus a working corpus (a temporary directory unless ``--work`` is given) and stops after N seconds
or N executions.
Crashes (an exception that is not a mimirlite error, a broken invariant), hangs (``--timeout``
seconds on one input) and out-of-memory inputs are written to ``--artifacts`` as
``<name>-crash-<sha1>`` (``-timeout-``, ``-oom-``); replay one with
``python fuzz/fuzz_<name>.py <file>``. Prints per harness the executions, time, crashes, the coverage
libFuzzer reached (``cov``: instrumented edges of mimirlite, first from the seeds alone, then at the
end), and the corpus it reached (``corp``: inputs and bytes, as libFuzzer counts them) with the new
inputs it wrote; ``--results FILE`` also writes that table as Markdown with the machine, the Python
and atheris versions and this command line, so anyone can rerun it. Exits 1 if any harness crashed
or failed to run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "fuzz_"
ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak")

_DONE = re.compile(r"^Done (\d+) (?:runs )?in (\d+) second", re.M)
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)
_PROGRESS = re.compile(r"^#(\d+)\s", re.M)
# libFuzzer's status lines: "#24  INITED cov: 16 ft: 27 corp: 5/25b exec/s: 0 rss: 61Mb"
_STATUS = re.compile(r"^#\d+\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\d+)([KM]?b)\b", re.M)
_UNIT = {"b": 1, "Kb": 1024, "Mb": 1024 * 1024}


def harnesses() -> list[str]:
    """Names of the harnesses in this folder (``fuzz_<name>.py``), sorted."""
    return sorted(p.stem[len(PREFIX) :] for p in HERE.glob(f"{PREFIX}*.py"))


@dataclass
class Result:
    harness: str
    status: str = "ok"
    """ok; crash, hang or oom (an artifact was written); error (the harness did not run to its end)."""
    runs: int = 0
    seconds: float = 0.0
    crashes: int = 0
    cov_seeds: int = 0
    """libFuzzer's ``cov`` (instrumented edges reached) once the seed corpus was run."""
    cov: int = 0
    """libFuzzer's ``cov`` at the end."""
    features: int = 0
    """libFuzzer's ``ft`` at the end."""
    corpus_inputs: int = 0
    """libFuzzer's ``corp``: the inputs it keeps (seeds that added coverage, then new ones), at the end."""
    corpus_bytes: int = 0
    """Their size as libFuzzer prints it (whole bytes below 16 KiB, then KiB or MiB)."""
    new_inputs: int = 0
    """Inputs written to the working corpus (new coverage found by this run)."""
    new_bytes: int = 0
    artifacts: list[str] = field(default_factory=list)
    log: str = ""
    detail: str = ""

    @property
    def exec_per_second(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def _artifacts(directory: Path, harness: str) -> set[Path]:
    return {p for kind in ARTIFACT_KINDS for p in directory.glob(f"{harness}-{kind}-*")}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the harness process we started (its own session: the group holds only what it spawned)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def _harness_env() -> dict[str, str]:
    """Our environment, with this repository first on the import path: a harness fuzzes the
    mimirlite next to it, not another copy that happens to be installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    return env


def run_one(harness: str, args: argparse.Namespace, work_root: Path) -> Result:
    script = HERE / f"{PREFIX}{harness}.py"
    result = Result(harness)
    if not script.is_file():
        result.status, result.detail = "error", f"no harness {script.name}"
        return result
    work = work_root / harness
    work.mkdir(parents=True, exist_ok=True)
    artifacts = Path(args.artifacts).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = Path(args.corpus).resolve() / harness
    cmd = [sys.executable, str(script), str(work)]
    if seeds.is_dir():
        cmd.append(str(seeds))  # libFuzzer adds new inputs to the first directory only
    cmd += [
        f"-atheris_runs={args.runs}" if args.runs is not None else f"-max_total_time={args.seconds}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-artifact_prefix={artifacts}/{harness}-",
        "-print_final_stats=1",
    ]
    dictionary = HERE / "dicts" / f"{harness}.dict"
    if dictionary.is_file():
        cmd.append(f"-dict={dictionary}")
    before = _artifacts(artifacts, harness)
    log_path = artifacts / f"{harness}.log"
    result.log = str(log_path)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_harness_env()
        )
        try:
            proc.wait(args.wall_limit)
        except subprocess.TimeoutExpired:
            result.detail = f"stopped after the wall limit of {args.wall_limit} s"
        finally:
            _stop(proc)
    result.seconds = round(time.monotonic() - start, 1)
    text = log_path.read_text(errors="replace")
    if (m := _DONE.search(text)) or (m := _EXECUTED.search(text)):
        result.runs = int(m.group(1))
    elif found := _PROGRESS.findall(text):
        result.runs = int(found[-1])
    _read_status(text, result)
    written = [p for p in work.iterdir() if p.is_file()]
    result.new_inputs, result.new_bytes = len(written), sum(p.stat().st_size for p in written)
    new = sorted(_artifacts(artifacts, harness) - before)
    result.artifacts = [str(p) for p in new]
    result.crashes = len(new)
    if new:
        kinds = {p.name[len(harness) + 1 :].split("-", 1)[0] for p in new}
        result.status = "hang" if "timeout" in kinds else "oom" if "oom" in kinds else "crash"
    elif result.detail or proc.returncode != 0 or not _DONE.search(text):
        result.status = "error"
        result.detail = result.detail or f"exit code {proc.returncode}; see {log_path}"
    return result


def _read_status(text: str, result: Result) -> None:
    """Coverage and corpus from libFuzzer's status lines: after the seeds (INITED), and the last one."""
    found = _STATUS.findall(text)
    if not found:
        return
    for kind, cov, *_ in found:
        if kind == "INITED":
            result.cov_seeds = int(cov)
            break
    _, cov, ft, inputs, size, unit = found[-1]
    result.cov, result.features = int(cov), int(ft)
    result.corpus_inputs, result.corpus_bytes = int(inputs), int(size) * _UNIT[unit]


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1048576:.1f} MiB"


def _corp_size(n: int) -> str:
    """libFuzzer's corpus size, no more precise than it prints it (KiB from 16 KiB, MiB from 16 MiB)."""
    return f"{n} B" if n < 1 << 14 else f"{n >> 10} KiB" if n < 1 << 24 else f"{n >> 20} MiB"


def _row(r: Result) -> list[str]:
    return [
        r.harness,
        r.status,
        f"{r.runs:,}",
        f"{r.seconds:,}",
        f"{r.exec_per_second:,.0f}",
        str(r.crashes),
        f"{r.cov_seeds} → {r.cov}",
        str(r.features),
        f"{r.corpus_inputs} inputs, {_corp_size(r.corpus_bytes)}",
        f"{r.new_inputs} inputs, {_size(r.new_bytes)}",
    ]


HEADER = ["harness", "status", "executions", "seconds", "exec/s", "crashes", "cov", "ft", "corpus", "new"]


def _versions() -> tuple[str, str]:
    try:
        atheris = importlib.metadata.version("atheris")
    except importlib.metadata.PackageNotFoundError:
        atheris = "not installed"
    return platform.python_version(), atheris


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu})"


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def results_markdown(results: list[Result], command: str, started: str, loads: tuple[str, str]) -> str:
    """The table of a run, as ``--results`` writes it."""
    python, atheris = _versions()
    total_runs = sum(r.runs for r in results)
    total_seconds = sum(r.seconds for r in results)
    lines = [
        "# Fuzzing results",
        "",
        "Written by this command, run from the repository root (rerun it to check the figures):",
        "",
        "```sh",
        command,
        "```",
        "",
        f"- Started {started}; Python {python}, atheris {atheris}.",
        f"- Machine: {_machine()}; load average {loads[0]} at the start, {loads[1]} at the end",
        "  (the machine may be shared: times are upper bounds).",
        "- One harness at a time, each from its seed corpus `fuzz/corpus/<name>/` and an empty working",
        "  corpus.",
        "- `cov`: instrumented edges of mimirlite libFuzzer reached, after the seeds → at the end; `ft`: its",
        "  features; `corpus`: the inputs libFuzzer kept at the end (its `corp`), `new`: the inputs this run",
        "  added to the working corpus.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|---|" + "---:|" * 4 + "---|---:|---|---|",
    ]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    crashed = [r.harness for r in results if r.status != "ok"]
    lines += [
        "",
        f"{total_runs:,} executions in {total_seconds:,.0f} s in all; "
        + (
            f"not ok: {', '.join(crashed)}."
            if crashed
            else "every harness ok: no crash, hang or out-of-memory input."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--seconds", type=int, help="fuzzing time per harness (default 10)")
    limit.add_argument("--runs", type=int, help="executions per harness")
    parser.add_argument(
        "harness", nargs="*", help=f"harnesses to run (default: all of {', '.join(harnesses())})"
    )
    parser.add_argument(
        "--corpus", default=str(HERE / "corpus"), help="seed corpus root (default fuzz/corpus)"
    )
    parser.add_argument("--work", help="working corpus root, kept (default: a temporary directory)")
    parser.add_argument("--artifacts", default=str(HERE / "artifacts"), help="crash inputs and logs")
    parser.add_argument("--timeout", type=int, default=25, help="seconds on one input before it is a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory per harness process")
    parser.add_argument("--wall-limit", type=float, help="stop a harness after this many seconds in all")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--results", metavar="FILE", help="also write the results as Markdown (e.g. fuzz/RESULTS.md)"
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "fuzz/run.py", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_at_start = _load()
    # stopped by a signal: leave through the finally blocks, which stop the running harness
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.runs is None and args.seconds is None:
        args.seconds = 10
    names = args.harness or harnesses()
    unknown = sorted(set(names) - set(harnesses()))
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; known: {', '.join(harnesses())}")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="mimirlite-fuzz-") as tmp:
        work_root = Path(args.work).resolve() if args.work else Path(tmp)
        for name in names:
            if not args.json:
                print(f"{name}: fuzzing...", flush=True)
            result = run_one(name, args, work_root)
            results.append(result)
            if not args.json:
                print(
                    f"{name}: {result.status}, {result.runs} executions in {result.seconds} s "
                    f"({result.exec_per_second:.0f}/s), {result.crashes} crashes, "
                    f"cov {result.cov_seeds} -> {result.cov}, corpus {result.corpus_inputs} inputs "
                    f"({_corp_size(result.corpus_bytes)}), {result.new_inputs} new",
                    flush=True,
                )
                for path in result.artifacts:
                    print(f"  artifact: {path}")
                if result.detail:
                    print(f"  {result.detail}")
    if args.results:
        text = results_markdown(results, command, started, (load_at_start, _load()))
        Path(args.results).write_text(text, encoding="utf-8")
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        rows = [HEADER, *(_row(r) for r in results)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
        print()
        for row in rows:
            print(
                "  ".join(
                    c.ljust(w) if i in (0, 1) else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        if args.results:
            print(f"\nwritten to {args.results}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
