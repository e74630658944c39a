"""Run a command under the restrictions a systemd unit asks of the kernel, without systemd: the tests of
``examples/systemd/mimirlite-node.service`` run the node this way (no init system here to run the unit).

``python -m tests.helpers.sandbox POLICY.json -- COMMAND...`` sets, in this order, then execs COMMAND:
``UMask=`` (``umask``), ``MemoryDenyWriteExecute=`` (``prctl(PR_SET_MDWE)``, Linux 6.3, what systemd
itself uses where the kernel has it), ``RestrictAddressFamilies=`` (a seccomp filter: ``socket()`` of
another family fails with EAFNOSUPPORT, as systemd's does) and ``SystemCallFilter=`` (a seccomp filter
allowing the ``syscalls`` listed, any other failing with ``errno``; loading it sets no_new_privs, as
``NoNewPrivileges=`` does). The filters go through libseccomp (libseccomp.so.2, which systemd links
too) by ctypes. The policy file: ``{"umask": int, "mdwe": bool, "families": [int], "syscalls": [str],
"errno": int}``. :func:`syscall_groups` reads systemd's own groups (``systemd-analyze syscall-filter``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterable

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GE = 4, 5
AF_MAX = 46
"""One past the highest address family Linux has (linux/socket.h: AF_MAX, 6.x)."""


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def syscall_groups() -> dict[str, list[str]]:
    """systemd's system call groups (``@name`` -> members: calls and other groups), as this machine's
    ``systemd-analyze syscall-filter`` prints them."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    groups: dict[str, list[str]] = {}
    members: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.split()[0], [])
        elif line.startswith(" ") and members is not None:
            word = line.strip()
            if word and not word.startswith("#"):
                members.append(word)
        else:
            members = None
    return groups


def expand(names: Iterable[str], groups: dict[str, list[str]]) -> set[str]:
    """The system calls of ``names`` (calls and ``@groups``, nested)."""
    calls: set[str] = set()
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name.startswith("@"):
            if name not in seen:
                seen.add(name)
                todo.extend(groups[name])
        else:
            calls.add(name)
    return calls


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    )
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    return lib


def _check(result: int, what: str) -> None:
    if result < 0:
        raise OSError(-result, f"libseccomp: {what}: {os.strerror(-result)}")


def _load(lib: ctypes.CDLL, default: int, rules: list[tuple[int, int, list[ArgCmp]]]) -> None:
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for action, nr, cmps in rules:
            array = (ArgCmp * max(len(cmps), 1))(*cmps)
            _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array), f"rule for {nr}")
        _check(lib.seccomp_load(ctx), "load")
    finally:
        lib.seccomp_release(ctx)


def restrict_families(lib: ctypes.CDLL, families: set[int]) -> None:
    """``socket()`` of a family not in ``families`` fails with EAFNOSUPPORT; everything else passes."""
    nr = lib.seccomp_syscall_resolve_name(b"socket")
    deny = scmp_act_errno(errno.EAFNOSUPPORT)
    rules = [(deny, nr, [ArgCmp(0, SCMP_CMP_EQ, f, 0)]) for f in range(AF_MAX) if f not in families]
    rules.append((deny, nr, [ArgCmp(0, SCMP_CMP_GE, AF_MAX, 0)]))
    _load(lib, SCMP_ACT_ALLOW, rules)


def allow_syscalls(lib: ctypes.CDLL, names: Iterable[str], code: int) -> None:
    """Only the system calls ``names`` (those this libseccomp knows); any other fails with ``code``."""
    numbers = {lib.seccomp_syscall_resolve_name(n.encode()) for n in names}
    rules = [(SCMP_ACT_ALLOW, nr, []) for nr in sorted(numbers) if nr >= 0]
    _load(lib, scmp_act_errno(code), rules)


def main(argv: list[str]) -> None:
    policy_file, sep, *command = argv
    assert sep == "--" and command, "usage: python -m tests.helpers.sandbox POLICY.json -- COMMAND..."
    with open(policy_file) as f:
        policy = json.load(f)
    os.umask(policy["umask"])
    libc = ctypes.CDLL(None, use_errno=True)
    if policy["mdwe"] and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
    lib = _libseccomp()
    restrict_families(lib, set(policy["families"]))
    allow_syscalls(lib, policy["syscalls"], policy["errno"])
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
