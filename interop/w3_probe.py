"""Probe W3's run-to-run spread: run the mimirlite W3 pair many times under controlled variables.

``python interop/w3_probe.py --runs 10 --pin same|split|none --gc on|off|freeze [--tokens N]``

Each run starts a fresh listener and dialer (``bench_worker.py``, W3 only), optionally pinned with
``os.sched_setaffinity`` (``same``: both on CPU 0; ``split``: listener on 0, dialer on 1) and with the
collector disabled or frozen after imports. It prints one JSON line per run: msg/s, both processes'
page faults, context switches and CPU seconds (from /proc), and the dialer's receive-window history
(window size at each grant, the time since the previous grant). A diagnostic tool, not a bench section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PRELUDE = r"""
import atexit, gc, json, os, resource, runpy, sys, time
cpus = os.environ.get("W3P_CPUS")
if cpus:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
gcmode = os.environ.get("W3P_GC", "on")
hist = []
if os.environ.get("W3P_WINDOW"):
    from mimirlite.wire import yamux as _y
    _orig = _y.YamuxSession.consumed
    def consumed(self, sid, n, now=None):
        st = self._streams.get(sid)
        before = st.window if st is not None else None
        out0 = len(self._out)
        _orig(self, sid, n, now)
        if st is not None and len(self._out) > out0:
            hist.append((round(time.perf_counter(), 6), before, st.window))
    _y.YamuxSession.consumed = consumed
gcs = []
def on_gc(phase, info):
    if phase == "start":
        gcs.append([info["generation"], time.perf_counter()])
    elif gcs:
        gcs[-1][1] = time.perf_counter() - gcs[-1][1]
gc.callbacks.append(on_gc)
if gcmode == "off":
    gc.disable()
elif gcmode == "freeze":
    import mimirlite, mimirlite.net.host  # noqa: the host's modules, then freeze what they made
    gc.collect(); gc.freeze()
def dump():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    g2 = [d for g, d in gcs if g == 2]
    sys.stderr.write("W3P " + json.dumps({
        "minflt": ru.ru_minflt, "majflt": ru.ru_majflt, "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw,
        "cpu": ru.ru_utime + ru.ru_stime, "gc": [sum(1 for g, _ in gcs if g == i) for i in range(3)],
        "gc2_ms": round(sum(g2) * 1000, 2), "gc_ms": round(sum(d for _, d in gcs) * 1000, 2),
        "win": hist}) + "\n")
    sys.stderr.flush()
atexit.register(dump)
sys.argv = [sys.argv[0], *sys.argv[1:]]
runpy.run_path(os.environ["W3P_WORKER"], run_name="__main__")
"""


def proc_stats(pid: int) -> dict[str, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    out = {"minflt": int(fields[7]), "majflt": int(fields[9]), "cpu": (int(fields[11]) + int(fields[12])) / tick}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            out["nvcsw"] = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches"):
            out["nivcsw"] = int(line.split()[1])
    return out


def spawn(mode: str, cpus: str, gc: str, extra: list[str], window: bool) -> subprocess.Popen[str]:
    env = {**os.environ, "W3P_CPUS": cpus, "W3P_GC": gc, "W3P_WORKER": str(HERE / "bench_worker.py"),
           "PYTHONPATH": str(ROOT)}
    if window:
        env["W3P_WINDOW"] = "1"
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE, mode, *extra], env=env, cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def one_run(pin: str, gc: str, tokens: int, window: bool, workloads: list[str]) -> dict[str, Any]:
    lcpu, dcpu = {"same": ("0", "0"), "split": ("0", "1"), "none": ("", ""), "swap": ("1", "0")}[pin]
    lst = spawn("listen", lcpu, gc, [], window)
    try:
        assert lst.stdout is not None
        ev = json.loads(lst.stdout.readline())
        addr = ev["addr"]
        time.sleep(0.2)
        before = proc_stats(lst.pid)
        params = {"workloads": workloads, "tokens": tokens, "tokens_cap_s": 60.0}
        t0 = time.perf_counter()
        dial = spawn("dial", dcpu, gc, ["--addr", addr, "--params", json.dumps(params)], window)
        assert dial.stdout is not None and dial.stderr is not None
        lines = []
        for line in dial.stdout:
            lines.append(line)
            if '"done"' in line:
                break
        dial.wait(60)
        out, err = "".join(lines), dial.stderr.read()
        if dial.stdin is not None:
            dial.stdin.close()
        wall = time.perf_counter() - t0
        after = proc_stats(lst.pid)
    finally:
        if lst.stdin is not None:
            lst.stdin.close()
        try:
            lst.wait(5)
        except subprocess.TimeoutExpired:
            lst.kill()
            lst.wait()
    res = next(json.loads(x) for x in out.splitlines() if '"W3"' in x)
    dstat = next((json.loads(x[4:]) for x in err.splitlines() if x.startswith("W3P ")), {})
    lerr = lst.stderr.read() if lst.stderr else ""
    lstat = next((json.loads(x[4:]) for x in lerr.splitlines() if x.startswith("W3P ")), {})
    win = dstat.pop("win", [])
    lstat.pop("win", None)
    grants = len(win)
    final = win[-1][2] if win else None
    grow_at = [round(t - win[0][0], 4) for t, b, a in win if a != b]
    return {
        "pin": pin, "gc": gc, "msg_s": round(res.get("values", {}).get("msg_s", 0)), "wall": round(wall, 2),
        "l": {k: round(after[k] - before[k], 3) for k in after}, "l_gc": lstat.get("gc"),
        "l_gc_ms": lstat.get("gc_ms"), "d": dstat, "grants": grants, "final_win": final, "grow_at": grow_at,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pin", default="none")
    ap.add_argument("--gc", default="on")
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--window", action="store_true")
    ap.add_argument("--workloads", default="W3")
    a = ap.parse_args()
    for pin in a.pin.split(","):
        for gc in a.gc.split(","):
            for _ in range(a.runs):
                print(json.dumps(one_run(pin, gc, a.tokens, a.window, a.workloads.split(","))), flush=True)


if __name__ == "__main__":
    main()
