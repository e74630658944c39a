"""Smoke run of every atheris fuzz harness in fuzz/ (through fuzz/run.py): a few thousand executions
each, starting from the seed corpus, with no crash, and the coverage and corpus each reached reported;
``--results`` writes them with the command that produced them. Longer runs: fuzz/README.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
RUNS = 3000
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def _atheris_missing() -> str | None:
    """Why atheris cannot be imported by this Python, or None when it can."""
    proc = subprocess.run(
        [sys.executable, "-c", "import atheris"], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


_MISSING = _atheris_missing()
needs_atheris = pytest.mark.skipif(
    _MISSING is not None, reason=f"atheris cannot be imported ({_MISSING}); pip install -e '.[fuzz]'"
)


def test_every_decoder_has_a_harness_and_seeds() -> None:
    expected = {
        "varint",
        "lp",
        "multistream",
        "protobuf",
        "keys",
        "noise_payload",
        "identify",
        "noise_transport",
        "noise_handshake",
        "yamux",
        "mimir_packets",
        "mdns",
        "params",
        "gateway_http",
        "tunnel",
        "sse",
        "chunked",
    }
    assert expected <= set(HARNESSES)
    total = 0
    for name in HARNESSES:
        seeds = [p for p in (FUZZ / "corpus" / name).iterdir() if p.is_file()]
        assert seeds, f"no seed corpus for {name}"
        total += sum(p.stat().st_size for p in seeds)
    assert total < 1024 * 1024


@needs_atheris
@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_smoke(harness: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(FUZZ / "run.py"),
        f"--runs={RUNS}",
        "--wall-limit=150",
        "--json",
        f"--artifacts={tmp_path}",
        harness,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=200, check=False, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr
    [result] = json.loads(proc.stdout)
    log = Path(result["log"]).read_text(errors="replace") if result["log"] else ""
    tail = "\n".join(log.splitlines()[-40:])
    assert result["crashes"] == 0 and result["status"] == "ok", f"{result}\n{tail}"
    assert result["runs"] == RUNS, f"{result}\n{tail}"
    # what it reached, read from libFuzzer's status lines and the working corpus
    assert 0 < result["cov_seeds"] <= result["cov"], result
    assert result["corpus_inputs"] > 0 and result["corpus_bytes"] > 0, result
    assert result["new_inputs"] >= 0 and result["new_bytes"] >= 0, result
    assert proc.returncode == 0


@needs_atheris
def test_results_file_names_the_command_that_wrote_it(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    args = [f"--runs={RUNS}", "--wall-limit=150", f"--artifacts={tmp_path}", f"--results={results}", "varint"]
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = results.read_text()
    assert f"python fuzz/run.py {' '.join(args)}" in text
    assert "Python 3." in text and "atheris " in text and "CPUs" in text
    [row] = [line for line in text.splitlines() if line.startswith("| varint |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["ok", f"{RUNS:,}"] and cells[5] == "0", row
    seeds, end = (int(x) for x in cells[6].split(" → "))
    assert 0 < seeds <= end and cells[8].endswith(("B", "KiB")), row
    # the printed table carries the same figures
    assert re.search(rf"^varint\s+ok\s+{RUNS:,}\s", proc.stdout, re.M), proc.stdout
