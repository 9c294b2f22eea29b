"""Every file a run keeps goes through here: one path type, atomic writes, one writer at a time.

Paths are etils.epath paths, so a workdir may be local or on cloud storage (`gs://bucket/run`,
which Orbax reads and writes through the same library). A file is written whole or not at all:
into a temporary name beside it, then renamed over the old one, so a kill mid-write leaves the
previous version, never a truncated one. A training run holds WORKDIR/.lock for its whole life;
a second one is refused at once, naming the holder. The lock is an flock on a local file, which
the kernel drops when its process dies, so a killed run never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager

from etils import epath

from gptjax.config import ConfigError

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
    """A workdir, an input or an output path cannot be used as asked; the message says why."""


def path(value, flag: str = "--workdir") -> epath.Path:
    """A path of any backend epath knows (local, gs://, s3://); an empty one is refused."""
    if value is None or not str(value).strip():
        raise ConfigError(f"{flag} is empty; give a directory")
    return epath.Path(str(value).strip())


def is_local(p: epath.Path) -> bool:
    return not str(p).startswith(("gs://", "s3://", "az://", "hf://"))


def write_text(p: epath.Path, text: str) -> None:
    """Writes `text` to `p` atomically (temporary file, then rename)."""
    p = epath.Path(p)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(p: epath.Path, obj) -> None:
    write_text(p, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(p: epath.Path, what: str = "file") -> dict:
    """A JSON file written by gptjax; a missing or damaged one is a WorkdirError naming it."""
    p = epath.Path(p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkdirError(f"{p}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkdirError(f"{p}: the {what} is damaged (not valid JSON: {e})") from None


def append_lines(p: epath.Path, lines: list[str]) -> None:
    """Appends whole lines. Object stores cannot append: there the object is rewritten whole,
    which they do atomically."""
    p = epath.Path(p)
    text = "".join(line + "\n" for line in lines)
    if is_local(p):
        with open(p, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
        return
    write_text(p, (p.read_text(encoding="utf-8") if p.exists() else "") + text)


@contextmanager
def atomic_dir(dest: epath.Path):
    """Yields a local directory (a str) to fill; when the block ends without error, it replaces
    `dest` whole, so a kill leaves the previous version of `dest` or the new one, never a mix.
    Libraries that write only to local paths (transformers, safetensors) fill it; on cloud
    storage it is then copied up."""
    dest = epath.Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    if is_local(dest):
        tmp.mkdir(parents=True)
        try:
            yield os.fspath(tmp)
        except BaseException:
            tmp.rmtree()
            raise
    else:
        with tempfile.TemporaryDirectory() as local:
            yield local
            tmp.mkdir(parents=True)
            for name in sorted(os.listdir(local)):
                epath.Path(local, name).copy(tmp / name)
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        old.rmtree()


def prepare_for_writing(workdir: epath.Path) -> epath.Path:
    """The workdir, created if needed; a file in its place or no permission to write is a
    WorkdirError naming it."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir={workdir}: is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except PermissionError:
        raise WorkdirError(f"--workdir={workdir}: not writable (permission denied)") from None
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir}: cannot write there ({e.strerror or e})") from None
    return workdir


@contextmanager
def lock(workdir: epath.Path):
    """Holds WORKDIR/.lock for a training run; another run on the same workdir is refused."""
    if not is_local(workdir):
        # No flock on object stores: the holder is recorded, not enforced.
        write_json(workdir / LOCK_FILE, _holder())
        yield
        return
    fd = os.open(os.fspath(workdir / LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            raise WorkdirError(f"--workdir={workdir}: in use by another run ({holder}); wait for it to end, "
                               "or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def check_output_file(output, inputs=(), overwrite: bool = False) -> None:
    """Refuses an output file that is one of the inputs (unless --overwrite)."""
    if output is None or overwrite:
        return
    for name in inputs:
        if name and os.path.exists(name) and os.path.exists(output) and os.path.samefile(name, output):
            raise WorkdirError(f"--output={output}: is the input file; write elsewhere (or pass --overwrite)")


def is_nonempty_dir(p: epath.Path) -> bool:
    return p.is_dir() and any(True for _ in p.iterdir())
