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
import shutil
import signal
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager

from etils import epath

from gptjax.errors import ConfigError, WorkdirError


LOCK_FILE = ".lock"



def path(value, flag: str = "--workdir") -> epath.Path:
    """A path of any backend epath knows (local, gs://, s3://); an empty one is refused."""
    if value is None or not str(value).strip():
        raise ConfigError(f"{flag} is empty; give a directory")
    return epath.Path(str(value).strip())


def check_checkpoint_path(p: epath.Path) -> None:
    """Refuses a workdir Orbax cannot hold checkpoints in: it reads them through glob patterns,
    which refuse a recursive '**'."""
    if "**" in str(p):
        raise WorkdirError(f"--workdir={p}: a path with '**' cannot hold checkpoints (Orbax reads them through glob "
                           "patterns, which refuse it); rename the directory")


def is_local(p: epath.Path) -> bool:
    return not str(p).startswith(("gs://", "s3://", "az://", "hf://"))


_stop_signals: list[str] = []  # the signals that asked this command to stop
_SWALLOWING = ("_xla_gc_callback", "__del__")  # functions whose exceptions Python prints and drops


def stop(signum, frame):
    """The SIGTERM / SIGINT handler of commands that write outputs: raises KeyboardInterrupt, so
    that what is half written is removed on the way out, and records the signal, so that no
    output is completed even where the exception is swallowed (Python drops exceptions raised
    inside a garbage-collection callback, which JAX installs)."""
    _stop_signals.append(signal.Signals(signum).name)
    if frame is not None and frame.f_code.co_name in _SWALLOWING:
        return  # it would print a traceback and be lost; the next check_not_stopped raises it
    raise KeyboardInterrupt(_stop_signals[0])


def check_not_stopped() -> None:
    """Raises KeyboardInterrupt if a signal asked the command to stop: called before an output
    is completed."""
    if _stop_signals:
        raise KeyboardInterrupt(_stop_signals[0])


def write_text(p: epath.Path, text: str) -> None:
    """Writes `text` to `p` atomically (temporary file, then rename)."""
    p = epath.Path(p)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        check_not_stopped()
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
            raise _in_use(workdir, fd) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode())
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _in_use(workdir: epath.Path, fd: int) -> WorkdirError:
    holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
    return WorkdirError(f"--workdir={workdir}: in use by another run ({holder}); wait for it to end, or use another "
                        "--workdir")


def check_unlocked(workdir: epath.Path) -> None:
    """Refuses at once a workdir whose lock another run holds, without taking the lock (the
    command line asks before it restarts; lock() takes it later)."""
    if not is_local(workdir) or not (workdir / LOCK_FILE).is_file():
        return
    try:
        fd = os.open(os.fspath(workdir / LOCK_FILE), os.O_RDONLY)
    except OSError:
        return  # lock() reports what is wrong with it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(workdir, fd) from None
    except OSError:
        pass
    finally:
        os.close(fd)


PREVIOUS_DIR = "previous"  # WORKDIR/previous/TIME/: runs moved aside by --start_over; never moved again


def move_aside(workdir: epath.Path, names) -> epath.Path | None:
    """Moves those of `names` (entries of the workdir) that exist into a new directory
    WORKDIR/previous/TIME/ (UTC, to the second; -2, -3... if taken), and returns it; None when
    there was nothing to move. Nothing is deleted; the caller holds the workdir's lock."""
    present = [name for name in names if (workdir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime())
    (workdir / PREVIOUS_DIR).mkdir(exist_ok=True)
    for n in range(1, 1000):
        aside = workdir / PREVIOUS_DIR / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            aside.mkdir()  # claims the name: an existing one is never written into
            break
        except FileExistsError:
            continue
    else:
        raise WorkdirError(f"--workdir={workdir}: {workdir / PREVIOUS_DIR} has no free name for {stamp}")
    for name in present:
        (workdir / name).rename(aside / name)
    return aside


def clean_failed_start(workdir: epath.Path, new_dir: bool, new_lock: bool) -> None:
    """After a training command that failed before its run existed (no run.json): the lock file
    and the workdir, each if this command created it (the workdir only if left empty)."""
    if (workdir / RUN_MARKER).exists():
        return
    if new_lock:
        (workdir / LOCK_FILE).unlink(missing_ok=True)
    if new_dir and not any(True for _ in workdir.iterdir()):
        workdir.rmdir()


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


# Files that make a directory a trained run, an export or a model: no output lands inside one.
RUN_MARKER, EXPORT_MARKER = "run.json", "gptjax.json"
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def owner(p: epath.Path) -> tuple[epath.Path, str] | None:
    """The trained run, gptjax export or Hugging Face model directory that `p` is (or is in),
    as (directory, what it is); None when it is in none."""
    p = _absolute(p)
    chain = (p, *p.parents)
    for directory in chain:  # a run first: its export/ belongs to it
        if (directory / RUN_MARKER).exists():
            return directory, "a trained run"
    for directory in chain:
        if (directory / EXPORT_MARKER).exists():
            return directory, "a gptjax export"
        if (directory / "config.json").exists() and any((directory / name).exists() for name in MODEL_WEIGHTS):
            return directory, "a model directory"
    return None


def _absolute(p: epath.Path) -> epath.Path:
    return epath.Path(os.path.realpath(p)) if is_local(p) else epath.Path(p)


def same_path(a, b) -> bool:
    return str(_absolute(path(a))) == str(_absolute(path(b)))


def overlaps(a, b) -> bool:
    """Whether paths a and b are the same file or one lies inside the other."""
    a, b = str(_absolute(path(a))), str(_absolute(path(b)))
    if a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/"):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)  # a hard link


def check_output(output, reads=(), flag: str = "--output") -> epath.Path | None:
    """The output file of a reading mode, refused before any work if it would land on anything
    the command reads (`reads`: files and directories), on a directory, or inside a trained run,
    an export or a model directory. An existing file elsewhere is replaced (whole, at the end)."""
    if output is None:
        return None
    out = path(output, flag)
    if out.is_dir():
        raise WorkdirError(f"{flag}={out}: is a directory; name a file")
    for read in reads:
        if read and overlaps(out, read):
            raise WorkdirError(f"{flag}={out}: is {read} (or inside it), which this command reads; write elsewhere")
    found = owner(out.parent)
    if found:
        raise WorkdirError(f"{flag}={out}: lies inside {found[0]}, {found[1]}, whose files no reading mode replaces; "
                           "write elsewhere")
    if is_local(out):
        if not out.parent.is_dir():
            raise WorkdirError(f"{flag}={out}: no such directory {out.parent}")
        if not os.access(out.parent, os.W_OK):
            raise WorkdirError(f"{flag}={out}: cannot write in {out.parent} (permission denied)")
    return out


@contextmanager
def replace_files(dest: epath.Path, owned=(), last: str | None = None):
    """Yields a local directory (a str) to fill with files. When the block ends without error,
    each of them replaces the file of its name in `dest` (created if need be), `last` after all
    the others, then the files named in `owned` that the new set lacks are removed; nothing else
    in `dest` is touched. A new `dest` appears whole; an existing one gets each file whole (a kill
    between two leaves a mix, which a manifest written `last` reveals)."""
    dest = epath.Path(dest)
    local = is_local(dest)
    tmp = tempfile.mkdtemp(dir=dest.parent if local and dest.parent.is_dir() else None, prefix=f".{dest.name}.tmp-")
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # a directory as mkdir makes it (mkdtemp's is private)
    try:
        yield tmp
        check_not_stopped()
        names = sorted(os.listdir(tmp), key=lambda name: name == last)
        if local and not dest.exists():
            os.rename(tmp, dest)
            return
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            if local:
                os.replace(os.path.join(tmp, name), dest / name)
            else:
                epath.Path(tmp, name).copy(dest / name, overwrite=True)
        for name in sorted(set(owned) - set(names)):
            if (dest / name).is_file():
                (dest / name).unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
