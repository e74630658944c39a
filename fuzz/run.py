"""Run the fuzz harnesses (``fuzz/fuzz_<name>.py``) with atheris, one subprocess each, one after another.

    python fuzz/run.py [--seconds N | --runs N] [harness ...]

Each harness starts from its seed corpus (``fuzz/corpus/<name>/``, read only) plus a working corpus
(a temporary directory unless ``--work`` is given) and stops after N seconds or N executions.
Crashes (an exception that is not a mimirlite error, a broken invariant), hangs (``--timeout``
seconds on one input) and out-of-memory inputs are written to ``--artifacts`` as
``<name>-crash-<sha1>`` (``-timeout-``, ``-oom-``); replay one with
``python fuzz/fuzz_<name>.py <file>``. Prints executions, time and crashes per harness; exits 1 if
any harness crashed or failed to run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
    args = parser.parse_args(argv)
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
                    f"({result.exec_per_second:.0f}/s), {result.crashes} crashes",
                    flush=True,
                )
                for path in result.artifacts:
                    print(f"  artifact: {path}")
                if result.detail:
                    print(f"  {result.detail}")
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(f"\n{'harness':18} {'status':7} {'executions':>11} {'seconds':>8} {'exec/s':>8} {'crashes':>7}")
        for r in results:
            rate = f"{r.exec_per_second:.0f}"
            print(f"{r.harness:18} {r.status:7} {r.runs:>11} {r.seconds:>8} {rate:>8} {r.crashes:>7}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
