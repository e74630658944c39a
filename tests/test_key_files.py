"""Key files: a path that cannot be used is one line naming it (library error, and from every CLI
subcommand that takes ``--key-file``, never a traceback); a key file open to group or others is refused
with ssh's hint; two first runs started together agree on one identity."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from mimirlite.errors import InvalidKeyError, MimirliteError
from mimirlite.identity import MAX_KEY_FILE_SIZE, KeyFileError, KeyPair
from tests.helpers.nodeproc import PEER_ID, REPO, make_env, one_line, run

KEY = KeyPair.generate()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def key_file(path: Path, mode: int = 0o600, data: bytes | None = None) -> Path:
    path.write_bytes(KEY.to_private_protobuf() if data is None else data)
    path.chmod(mode)
    return path


# Each maker turns a fresh directory into a bad --key-file path; then the reason expected.
BAD_PATHS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "directory": (lambda d: (d / "key").mkdir() or d / "key", "it is a directory"),
    "fifo": (lambda d: os.mkfifo(d / "key") or d / "key", "it is not a regular file"),
    "device": (lambda d: Path(os.devnull), "it is not a regular file"),
    "under a file": (lambda d: key_file(d / "plain") / "key", "Not a directory"),
    "link to nothing": (lambda d: (d / "key").symlink_to(d / "gone") or d / "key", "it is a link to nothing"),
    "link loop": (
        lambda d: (d / "key").symlink_to(d / "key") or d / "key",
        "Too many levels of symbolic links",
    ),
    "no directory to create it in": (lambda d: d / "missing" / "key", "No such file or directory"),
    "group readable": (lambda d: key_file(d / "key", 0o640), "permissions 0640 are too open"),
    "other readable": (lambda d: key_file(d / "key", 0o604), "permissions 0604 are too open"),
    "group writable": (lambda d: key_file(d / "key", 0o620), "permissions 0620 are too open"),
    "empty": (lambda d: key_file(d / "key", data=b""), "not a key file"),
    "truncated": (lambda d: key_file(d / "key", data=KEY.to_private_protobuf()[:-5]), "not a key file"),
    "garbage": (lambda d: key_file(d / "key", data=b"not a key\n"), "not a key file"),
    "too large": (
        lambda d: key_file(d / "key", data=bytes(MAX_KEY_FILE_SIZE + 1)),
        f"larger than {MAX_KEY_FILE_SIZE} bytes",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_a_bad_key_path_is_one_error_naming_it(tmp_path: Path, case: str) -> None:
    make, reason = BAD_PATHS[case]
    path = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for load in (KeyPair.load, KeyPair.load_or_create):
        with pytest.raises(MimirliteError) as info:
            load(path)
        assert isinstance(info.value, (KeyFileError, InvalidKeyError))
        message = str(info.value)
        assert message.startswith(f"cannot use key file {path}: ") and reason in message
        assert "\n" not in message
    assert sorted(tmp_path.rglob("*")) == before  # nothing replaced, nothing left behind


def test_a_key_file_open_to_others_gets_the_chmod_hint_and_works_after_it(tmp_path: Path) -> None:
    path = key_file(tmp_path / "node.key", 0o644)
    with pytest.raises(KeyFileError, match=rf"run: chmod 600 {path}$"):
        KeyPair.load_or_create(path)
    assert KeyPair.load(path, check_permissions=False).peer_id == KEY.peer_id  # the check can be waived
    path.chmod(0o600)
    assert KeyPair.load_or_create(path).peer_id == KEY.peer_id
    path.chmod(0o400)  # read-only for the owner is fine too
    assert KeyPair.load(path).peer_id == KEY.peer_id


NOBODY = 65534


def test_an_unreadable_key_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Mode 000: refused with the OS's reason. Root reads any file, so as root the load runs in a child
    that has dropped to an unprivileged user first."""
    folder = tmp_path_factory.mktemp("unreadable")
    path = key_file(folder / "node.key", 0o000)
    if not IS_ROOT:
        with pytest.raises(KeyFileError, match="Permission denied"):
            KeyPair.load_or_create(path)
        return
    for parent in (folder, *folder.parents):  # the child must reach the file, not read it
        parent.chmod(parent.stat().st_mode | 0o011)
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, only an exit code
        code = 3
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            KeyPair.load_or_create(path)
            code = 1
        except KeyFileError as exc:
            code = 0 if "Permission denied" in str(exc) and "Traceback" not in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


CREATE = textwrap.dedent(
    """
    import os, sys, time
    from mimirlite.identity import KeyPair
    path, go = sys.argv[1], sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.001)
    print(KeyPair.load_or_create(path).peer_id, flush=True)
    """
)


def test_first_runs_started_together_agree_on_one_identity(tmp_path: Path) -> None:
    path, go = tmp_path / "node.key", tmp_path / "go"
    env = make_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, str(path), str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        go.touch()  # every process is released at once, all racing to create the file
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), outputs
    peers = {out.strip() for out, _ in outputs}
    assert len(peers) == 1 and PEER_ID.match(peers.pop()), outputs
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "node.key"]  # no temporary file left


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
async def test_id_says_one_line_for_a_bad_key_path(tmp_path: Path, case: str) -> None:
    make, reason = BAD_PATHS[case]
    path = make(tmp_path)
    res = await run("-m", "mimirlite", "id", "--key-file", str(path), env=make_env())
    assert res.rc == 1 and res.out == "", res
    line = one_line(res.err)
    assert line.startswith(f"mimirlite: cannot use key file {path}: ") and reason in line, res


@pytest.mark.parametrize(
    "command",
    [
        ("node", "--no-mdns", "--backend", "echo", "--listen", "/ip4/127.0.0.1/tcp/0"),
        ("chat", "--no-mdns", "-p", "hi"),
        ("peers", "--no-mdns"),
        ("gateway", "--no-mdns", "--port", "0"),
    ],
)
@pytest.mark.parametrize("case", ["directory", "group readable", "under a file"])
async def test_every_subcommand_says_one_line_for_a_bad_key_path(
    tmp_path: Path, command: tuple[str, ...], case: str
) -> None:
    make, reason = BAD_PATHS[case]
    path = make(tmp_path)
    res = await run("-m", "mimirlite", *command, "--key-file", str(path), env=make_env())
    assert res.rc == 1 and res.out == "", res
    line = one_line(res.err)
    assert line.startswith(f"mimirlite: cannot use key file {path}: ") and reason in line, res
    if case == "group readable":
        assert line.endswith(f"run: chmod 600 {path}")
