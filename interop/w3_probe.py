"""Probe W3's run-to-run spread: run the mimirlite W3 pair many times under controlled variables.

    python interop/w3_probe.py --runs 10 --pin none,same,split,swap --gc on,off,freeze \
        [--win ,262144,524288,1048576,grow] [--old DIR] [--window] [--tokens N] [--workloads W1,W2,W3]

Each run starts a fresh listener and dialer (``bench_worker.py``, W3 only by default), optionally pinned
with ``os.sched_setaffinity`` (``same``: both on CPU 0; ``split``: listener on 0, dialer on 1), with the
collector disabled or frozen after imports, with the receive window fixed (``--win``: bytes; ``grow``:
growth whatever the timing; empty: the default auto-tuning), and with another copy of mimirlite/ (``--old
DIR``, e.g. ``git archive HEAD~1 mimirlite | tar -x -C DIR``) interleaved run by run with this one, so
every variable sees the same mix of machine load. One JSON line per run: msg/s, both processes' page
faults, context switches (nivcsw: preempted) and CPU seconds (/proc, getrusage), GC counts, and with
``--window`` the dialer's window at each grant; then a table per variable. After ``W3P_DOG`` seconds
(default 8) both processes dump their connections' flow-control state (SIGUSR1). A diagnostic tool, not
a bench section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
        queued = _orig(self, sid, n, now)
        if st is not None and len(self._out) > out0:
            hist.append((round(time.perf_counter(), 6), before, st.window))
        return queued
    _y.YamuxSession.consumed = consumed
fixed = os.environ.get("W3P_WIN")
if fixed:  # a receive window fixed at this many bytes ("grow": growth whatever the timing)
    from mimirlite.wire import yamux as _y
    d = list(_y.YamuxConfig.__init__.__defaults__)
    if fixed == "grow":
        d[3] = 1e9
    else:
        d[0] = d[2] = int(fixed)
    _y.YamuxConfig.__init__.__defaults__ = tuple(d)
import signal, weakref
from mimirlite.net import connection as _c
_conns = weakref.WeakSet()
_init = _c.Connection.__init__
def _cinit(self, *a, **k):
    _init(self, *a, **k)
    _conns.add(self)
_c.Connection.__init__ = _cinit
def _dump(*_):
    for c in list(_conns):
        ss = c._session
        info = {"paused": c._write_paused, "blocked": c.write_blocked, "sched": c._flush_scheduled,
                "backlog": c._backlog, "drainw": len(c._drain_waiters),
                "tbuf": c._transport.get_write_buffer_size() if c._transport else None}
        if ss is not None:
            info["out"] = len(ss._out)
            info["streams"] = {sid: dict(win=st.window, rw=st.recv_window, un=st.unacked, sw=st.send_window,
                               state=st.state.name) for sid, st in ss._streams.items()}
        for sid, st in c._streams.items():
            info.setdefault("app", {})[sid] = dict(held=st.held, ww=st._write_waiter is not None,
                                                    rw=st._read_waiter is not None)
        sys.stderr.write("DUMP " + os.environ.get("W3P_ROLE", "") + " " + repr(info) + "\n")
        sys.stderr.flush()
signal.signal(signal.SIGUSR1, _dump)
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
    out = {
        "minflt": int(fields[7]),
        "majflt": int(fields[9]),
        "cpu": (int(fields[11]) + int(fields[12])) / tick,
    }
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            out["nvcsw"] = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches"):
            out["nivcsw"] = int(line.split()[1])
    return out


def spawn(
    mode: str, cpus: str, gc: str, extra: list[str], window: bool, win: str = ""
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "W3P_CPUS": cpus,
        "W3P_GC": gc,
        "W3P_WORKER": str(HERE / "bench_worker.py"),
        "PYTHONPATH": os.environ.get("W3P_CODE") or str(ROOT),
    }
    if window:
        env["W3P_WINDOW"] = "1"
    if win:
        env["W3P_WIN"] = win
    env["W3P_ROLE"] = mode
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE, mode, *extra],
        env=env,
        cwd=env["PYTHONPATH"],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def one_run(
    pin: str, gc: str, tokens: int, window: bool, workloads: list[str], win: str = ""
) -> dict[str, Any]:
    lcpu, dcpu = {"same": ("0", "0"), "split": ("0", "1"), "none": ("", ""), "swap": ("1", "0")}[pin]
    lst = spawn("listen", lcpu, gc, [], window, win)
    try:
        assert lst.stdout is not None
        ev = json.loads(lst.stdout.readline())
        addr = ev["addr"]
        time.sleep(0.2)
        before = proc_stats(lst.pid)
        params = {"workloads": workloads, "tokens": tokens, "tokens_cap_s": 60.0}
        t0 = time.perf_counter()
        dial = spawn("dial", dcpu, gc, ["--addr", addr, "--params", json.dumps(params)], window, win)
        assert dial.stdout is not None and dial.stderr is not None
        lines = []
        import signal
        import threading

        def watchdog() -> None:
            if dial.poll() is None:
                for p in (lst, dial):
                    os.kill(p.pid, signal.SIGUSR1)

        dog = threading.Timer(float(os.environ.get("W3P_DOG", "8")), watchdog)
        dog.start()
        for line in dial.stdout:
            lines.append(line)
            if '"done"' in line:
                break
        dial.wait(60)
        dog.cancel()
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
    for text in (err, lerr):
        for x in text.splitlines():
            if x.startswith("DUMP"):
                print(x, flush=True)
    grants = len(win)
    final = win[-1][2] if win else None
    grow_at = [round(t - win[0][0], 4) for t, b, a in win if a != b]
    return {
        "pin": pin,
        "gc": gc,
        "win": win,
        "msg_s": round(res.get("values", {}).get("msg_s", 0)),
        "wall": round(wall, 2),
        "l": {k: round(after[k] - before[k], 3) for k in after},
        "l_gc": lstat.get("gc"),
        "l_gc_ms": lstat.get("gc_ms"),
        "d": dstat,
        "grants": grants,
        "final_win": final,
        "grow_at": grow_at,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pin", default="none")
    ap.add_argument("--gc", default="on")
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--window", action="store_true")
    ap.add_argument("--workloads", default="W3")
    ap.add_argument("--win", default="", help="receive windows to try (comma-separated): bytes, or grow")
    ap.add_argument(
        "--old", default="", help="a directory holding another mimirlite/ to interleave with this one"
    )
    a = ap.parse_args()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(a.runs):  # interleaved: each variable sees the same mix of machine load
        for pin in a.pin.split(","):
            codes = ["", a.old] if a.old else [""]
            for gc, win, code in [
                (g, w, c) for g in a.gc.split(",") for w in a.win.split(",") for c in codes
            ]:
                os.environ["W3P_CODE"] = code
                r = one_run(pin, gc, a.tokens, a.window, a.workloads.split(","), win)
                r["code"] = "old" if code else "new"
                r["load"] = Path("/proc/loadavg").read_text().split()[0]
                results.setdefault((pin, f"{r['code']} {gc}/{win or 'auto'}"), []).append(r)
                print(json.dumps(r), flush=True)
    print(
        "pin    code gc/window runs  median msg/s  min..max            spread/median  listener busy  nivcsw"
    )
    for (pin, gc), rs in results.items():
        rates = sorted(r["msg_s"] for r in rs)
        med = statistics.median(rates)
        busy = statistics.median(r["l"]["cpu"] / (a.tokens / r["msg_s"]) for r in rs if r["msg_s"])
        cs = statistics.median(r["l"]["nivcsw"] + r["d"].get("nivcsw", 0) for r in rs)
        print(
            f"{pin:6} {gc:14} {len(rs):4}  {med:12,.0f}  {rates[0]:8,}..{rates[-1]:<8,}  "
            f"{(rates[-1] - rates[0]) / med:13.0%}  {busy:13.2f}  {cs:10.0f}"
        )


if __name__ == "__main__":
    main()
