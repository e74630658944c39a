"""CI's smoke run of the benchmark runner: ``python interop/bench.py --quick`` prints a complete table.

No speed is asserted: the run only has to finish, with a figure in every row (py-libp2p's rows may
instead say why they were skipped: ``--quick`` never builds py-libp2p's environment; R1's NAT lab rows
may say why no lab could be built here, e.g. not root).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "interop" / "bench.py"
TIMEOUT = 240

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("node") is None or not (ROOT / "interop" / "node_modules" / "libp2p").is_dir(),
        reason="needs node and the pinned js-libp2p stack (npm ci in interop/)",
    ),
]


def load_bench() -> ModuleType:
    if str(BENCH.parent) not in sys.path:
        sys.path.append(str(BENCH.parent))  # bench.py imports its worker module, as when run as a script
    spec = importlib.util.spec_from_file_location("mimirlite_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_quick(tmp_path: Path, *args: str) -> tuple[str, str, str]:
    md = tmp_path / "bench.md"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--markdown", str(md), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the runner stops its workers on Ctrl-C
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"bench.py --quick took over {TIMEOUT} s; stderr:\n{err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}; stderr:\n{err[-3000:]}\nstdout:\n{out[-3000:]}"
    assert md.exists(), "no markdown written"
    return out, err, md.read_text()


def table_cells(markdown: str) -> list[list[str]]:
    """The main table's rows (workload | figure | peer | median | spread | vs best)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 6 and cells[0] in {f.workload for f in load_bench().FIGURES}:
            rows.append(cells)
    return rows


def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    bench = load_bench()
    out, _err, markdown = run_quick(tmp_path)
    rows = table_cells(markdown)
    expected = bench.table_rows(bench.QUICK["params"])
    assert len(rows) == len(expected), f"{len(rows)} rows, expected {len(expected)}:\n{markdown}"

    by_key = {f.key: f for f in bench.FIGURES}
    pylibp2p = {p.name for p in bench.PAIRS if p.key == "pp"} | {"py-libp2p"}
    for cells, (key, peer, _limit) in zip(rows, expected, strict=True):
        workload, figure, got_peer, median, _spread, ratio = cells
        assert workload == by_key[key].workload
        assert got_peer == peer, cells
        assert by_key[key].unit in figure, cells
        if peer in pylibp2p and median.startswith("n/a"):
            continue  # no py-libp2p environment yet: the note says so (checked below)
        if peer == bench.LAB_PEER and median.startswith("n/a") and "R1b needs a NAT lab: " in markdown:
            continue  # no NAT lab here (not root, no nft): the note says why
        assert median[:1].isdigit(), f"no figure in row {cells}\n{markdown}"
        assert ratio, f"no ratio in row {cells}"

    if any(c[2] in pylibp2p and c[3].startswith("n/a") for c in rows):
        assert "skipped in --quick" in markdown

    # the same table went to stdout, followed by the targets of issue 5
    for peer in {p for _, p, _ in expected}:
        assert peer in out
    assert "Targets" in out and "W5 idle RSS <= 40 MiB" in out
    assert "T1 tunnel chunks/s >= 3x the latest JS pair's" in out
    assert "D1 RSS growth < 20 MiB per 10,000 records" in out
    assert "R1 relay MiB per CPU second >= 2x js-libp2p's relay" in out
    assert "R1 DCUtR within 2 RTT + 100 ms in the NAT lab" in out
    assert "F1 node with an OpenAI-compatible backend: idle RSS <= 40 MiB" in out
    assert "F3 gateway idle RSS <= 35 MiB" in out
    assert "W6 node chunks/s >= 3x the first-generation JS node's" in out
    assert "W7 mimirlite node, echo: >= 30,000 chunks/s at 1,000 streams, node on one core" in out
    assert "W9 node RSS <= 30 KiB per idle connection" in out
    assert "machine:" in markdown and "Node" in markdown


def test_quick_relay_section_alone(tmp_path: Path) -> None:
    """``--only relay``: R1's rows have figures (the NAT lab's may say why no lab could be built here), every
    other row says it was not selected, and R1's targets are judged."""
    bench = load_bench()
    out, _err, markdown = run_quick(tmp_path, "--only", "relay")
    rows = table_cells(markdown)
    expected = bench.table_rows(bench.QUICK["params"])
    assert [(c[0], c[2]) for c in rows] == [(bench.FIG[k].workload, p) for k, p, _ in expected], markdown
    no_lab = "R1b needs a NAT lab: " in markdown
    r1 = [c for c in rows if c[0] == "R1"]
    assert {c[2] for c in r1} == {*bench.RELAYS.values(), bench.LAB_PEER}
    for _workload, _figure, peer, median, _spread, _ratio in r1:
        if peer == bench.LAB_PEER and no_lab:
            assert median.startswith("n/a")
        else:
            assert median[:1].isdigit(), f"no figure for {peer}:\n{markdown}"
    for cells in rows:
        if cells[0] != "R1":
            assert cells[3].startswith("n/a"), cells
    assert "not selected" in markdown
    targets = [line for line in out.splitlines() if "R1 " in line and ("met" in line or "MISSED" in line)]
    assert len(targets) == (1 if no_lab else 2), out


def test_quick_backend_section_alone(tmp_path: Path) -> None:
    """``--only backend``: W6's and W8's rows (the CLI node, the first-generation JS node, the openai SDK's
    direct read, the SDK through the gateway) have figures, every other row says it was not selected, and
    the four W6/W8 targets are judged."""
    bench = load_bench()
    out, _err, markdown = run_quick(tmp_path, "--only", "backend")
    rows = table_cells(markdown)
    expected = bench.table_rows(bench.QUICK["params"])
    assert [(c[0], c[2]) for c in rows] == [(bench.FIG[k].workload, p) for k, p, _ in expected], markdown
    ours = [c for c in rows if c[0] in ("W6", "W8")]
    assert {c[2] for c in ours} == {*(p for names in bench.bench_backend.ROWS.values() for p in names)}
    for cells in rows:
        if cells[0] in ("W6", "W8"):
            assert cells[3][:1].isdigit(), f"no figure in row {cells}\n{markdown}"
            assert cells[5], f"no ratio in row {cells}"
        else:
            assert cells[3].startswith("n/a"), cells
    assert "W6/W8 reader CPU per chunk" in markdown
    targets = [line.split()[:2] for line in out.splitlines() if line.split()[1:2] in (["W6"], ["W8"])]
    assert len(targets) == 4 and all(t[0] in ("met", "MISSED") for t in targets), out


def test_quick_curve_section_alone(tmp_path: Path) -> None:
    """``--only curve`` (W7): a figure in each of its rows (every backend, every level), every other row
    says it was not selected, and its three targets are judged."""
    bench = load_bench()
    out, _err, markdown = run_quick(tmp_path, "--only", "curve")
    rows = table_cells(markdown)
    expected = bench.table_rows(bench.QUICK["params"])
    assert [(c[0], c[2]) for c in rows] == [(bench.FIG[k].workload, p) for k, p, _ in expected], markdown
    w7 = [c for c in rows if c[0] == "W7"]
    assert len(w7) == 2 * len(bench.CURVE_PEERS) == 2 * 3 * 4
    for _workload, _figure, peer, median, _spread, _ratio in w7:
        assert median[:1].isdigit(), f"no figure for {peer}:\n{markdown}"
    for cells in rows:
        if cells[0] != "W7":
            assert cells[3].startswith("n/a"), cells
    assert "node pinned to CPU" in markdown and "--max-concurrent 1000" in markdown
    targets = [line for line in out.splitlines() if "W7 " in line and ("met" in line or "MISSED" in line)]
    assert len(targets) == 3, out


def test_quick_idle_section_alone(tmp_path: Path) -> None:
    """``--only idle``: W9's rows have figures (a node held the client processes' connections), every other
    row says it was not selected, and W9's targets are judged."""
    bench = load_bench()
    out, _err, markdown = run_quick(tmp_path, "--only", "idle")
    rows = table_cells(markdown)
    expected = bench.table_rows(bench.QUICK["params"])
    assert [(c[0], c[2]) for c in rows] == [(bench.FIG[k].workload, p) for k, p, _ in expected], markdown
    w9 = [c for c in rows if c[0] == "W9"]
    assert {c[2] for c in w9} == set(bench.IDLE_PEERS.values())
    for cells in rows:
        if cells[0] == "W9":
            assert cells[3][:1].isdigit(), f"no figure in row {cells}:\n{markdown}"
        else:
            assert cells[3].startswith("n/a"), cells
    assert re.search(r"mimirlite: [0-9,]+ held \(", markdown), markdown
    targets = [line for line in out.splitlines() if "W9 " in line and ("met" in line or "MISSED" in line)]
    assert len(targets) == 2, out
