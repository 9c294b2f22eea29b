"""Orbax checkpoints that let a run continue exactly where it stopped.

WORKDIR/checkpoints/<step> holds the train state (parameters, optimizer state, step) and a JSON
record of everything else the loop needs: the data position (epoch, batches consumed), the
early-stopping state, the train metrics not yet logged, the config and the labels. Dropout keys
are derived from the seed and the step, so the step is the whole RNG state.

WORKDIR/best holds the best model by the validation metric in a manager of its own: rotation
in the first never deletes it, and it never deletes the latest checkpoint (which `best_fn` on a
single manager can).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from gptjax.errors import CheckpointError, CheckpointSaveError, first_line
from gptjax.sharding import to_host
from gptjax.workdir import check_checkpoint_path, is_local

log = logging.getLogger("gptjax")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request; the same command resumes

@jax.jit
def _fingerprint_arrays(arrays):
    def one(x):
        if x.dtype == jnp.bool_:
            words = x.astype(jnp.uint32)
        else:
            unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
            words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
        index = jnp.zeros(x.shape, jnp.uint32)  # the flat position, without a reshape of a sharded array
        stride = 1
        for axis in reversed(range(x.ndim)):
            index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
            stride *= x.shape[axis]
        return jnp.stack([jnp.sum(words * (2 * index + 1), dtype=jnp.uint32),
                          jnp.sum(words ^ (index * jnp.uint32(2654435761)), dtype=jnp.uint32)])

    return [one(x) for x in arrays]


def fingerprints(tree) -> dict[str, str]:
    """Per array of a pytree, a 64-bit checksum of its bits (two position-weighted sums, computed
    on the devices that hold it). Saved in a checkpoint's record and compared when it is read, so
    bytes damaged on disk are caught instead of trained or evaluated on."""
    leaves = [(_array_name(path), x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
              if isinstance(x, jax.Array)]
    sums = to_host(_fingerprint_arrays([x for _, x in leaves]))
    return {name: f"{int(a):08x}{int(b):08x}" for (name, _), (a, b) in zip(leaves, sums)}


def _array_name(path) -> str:
    """transformer/h/attn/c_attn/kernel for a pytree path (a TrainState's fields by name)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def verify(saved: dict | None, tree) -> None:
    """Refuses arrays whose checksum differs from the one their checkpoint recorded (None: a
    checkpoint older than checksums). Every array read must have one."""
    if saved is None:
        return
    for name, value in fingerprints(tree).items():
        if saved.get(name) != value:
            raise CheckpointError(f"array {name} differs from the checksum recorded when it was saved")


def abstract_like(tree):
    """Shapes, dtypes and shardings of `tree`: the target Orbax restores into, on this mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
    """The rotating checkpoints and the best model of one workdir."""

    def __init__(self, workdir, keep: int = 3, read_only: bool = False):
        """`read_only`: for the modes that only read a workdir; nothing is created, moved or deleted."""
        workdir = epath.Path(workdir)
        check_checkpoint_path(workdir)
        workdir = workdir.resolve() if is_local(workdir) else workdir
        self.directory = workdir / "checkpoints"
        self.best_directory = workdir / "best"
        self.keep = keep
        self.read_only = read_only
        self.manager = self._manager(self.directory, keep, "rotation")
        self.best = self._manager(self.best_directory, 1, "best")

    def _manager(self, directory, keep: int, name: str) -> ocp.CheckpointManager:
        # Both managers save the epoch-end step: on several hosts their commit barriers would
        # share a name and wait on each other unless each has its own prefix.
        options = ocp.CheckpointManagerOptions(
            # Read-only: nothing created or deleted. (Orbax's own read_only option logs warnings.)
            max_to_keep=None if self.read_only else keep, create=not self.read_only,
            cleanup_tmp_directories=not self.read_only,  # what a failed or killed save left
            enable_async_checkpointing=not self.read_only,
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
        )
        return ocp.CheckpointManager(directory, options=options)

    def save(self, step: int, state, meta: dict) -> None:
        """Starts writing in the background; training goes on meanwhile. A failed write (this
        one's start, or the one before it, which surfaces here) is a CheckpointSaveError."""
        start = time.perf_counter()
        meta = {**meta, "checksums": fingerprints(state)}
        with self._saving(step, self.manager, state):
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)))
        log.info("checkpoint %d: save started (%.2f s blocking)", step, time.perf_counter() - start)

    def save_best(self, step: int, params, meta: dict) -> None:
        # The best manager keeps one: saving a new best replaces the old only once it is complete.
        meta = {**meta, "checksums": fingerprints(params)}
        with self._saving(step, self.best, params):
            self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                         meta=ocp.args.JsonSave(meta)))

    @contextlib.contextmanager
    def _saving(self, step: int, manager: ocp.CheckpointManager, tree):
        directory = manager.directory
        try:
            manager.wait_until_finished()  # the save before it (as manager.save would), so its failure is its own
            _check_free_space(directory, tree)
            yield
        except Exception as e:  # noqa: BLE001 - a disk full, a permission, a vanished mount: all stop the run
            raise CheckpointSaveError(step, directory, e) from e

    def restore_latest(self, target, check=lambda meta: None):
        """(state, meta) from the newest readable checkpoint, or None if there is none.

        `check(meta)` runs on the checkpoint's JSON record before any array is read, and raises
        if the run may not resume from it. A checkpoint killed mid-write never appears (Orbax
        commits by renaming a temporary directory); one damaged after the fact fails to restore,
        is moved aside to checkpoints/damaged-<step>-<time>, and the one before it is used.
        """
        damaged = []
        restored = None
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as e:  # noqa: BLE001 - an unreadable record makes the checkpoint unusable
                log.warning("checkpoint %d in %s is damaged (%s); trying the one before it", step, self.directory,
                            _reason(e))
                damaged.append(step)
                continue
            check(meta)
            try:
                state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
                verify(meta.get("checksums"), state)
                restored = (state, meta)
                break
            except Exception as e:  # noqa: BLE001 - any failure to read means this one is unusable
                log.warning("checkpoint %d in %s is damaged (%s); trying the one before it", step, self.directory,
                            _reason(e))
                damaged.append(step)
        if damaged and not self.read_only:
            # Moved aside (not deleted) so that the step numbers can be written again.
            self.manager.close()
            for step in damaged:
                aside = self.directory / f"damaged-{step}-{int(time.time())}"
                shutil.move(str(self.directory / str(step)), str(aside))
            self.manager = self._manager(self.directory, self.keep, "rotation")
        return restored

    def restore_best(self, target):
        """(params, meta) of the best model, or None if there is none; a damaged one is a
        CheckpointError naming it."""
        step = self.best.latest_step()
        if step is None:
            return None
        try:
            result = self.best.restore(
                step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            verify(result.meta.get("checksums"), result.params)
        except Exception as e:  # noqa: BLE001 - any failure to read means the best model is unusable
            raise CheckpointError(f"{self.best_directory / str(step)}: the best model is damaged ({_reason(e)}); "
                                  "use --checkpoint=latest") from None
        return result.params, result.meta

    def restore_latest_params(self, state_target):
        """(params, step, meta) of the newest checkpoint, or None if there is none; a damaged one
        is a CheckpointError naming it (the modes that ask for the latest get it, not an older
        one in its place). `state_target` is the abstract train state; only its parameters are
        read (placeholders skip the step and the optimizer state, which are never built)."""
        step = self.manager.latest_step()
        if step is None:
            return None
        skip = lambda tree: jax.tree.map(lambda _: ocp.PLACEHOLDER, tree)  # noqa: E731
        item = type(state_target)(skip(state_target[0]), state_target[1], skip(state_target[2]))
        restore_args = jax.tree.map(lambda x: x if x is ocp.PLACEHOLDER else ocp.ArrayRestoreArgs(sharding=x.sharding),
                                    item)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args), meta=ocp.args.JsonRestore()))
            verify(restored.meta.get("checksums"), restored.state)
        except Exception as e:  # noqa: BLE001 - any failure to read means it is unusable
            raise CheckpointError(f"{self.directory / str(step)}: the latest checkpoint is damaged ({_reason(e)}); use "
                                  "--checkpoint=best (resuming training sets a damaged checkpoint aside)") from None
        return restored.state[1], step, restored.meta

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()
        self.best.close()


def _check_free_space(directory, tree) -> None:
    """Refuses a save that cannot fit on a local disk before it starts: one that fails in the
    background leaves Orbax's threads printing tracebacks on the way out. (The arrays' bytes,
    an eighth more and a MiB for Orbax's own files.)"""
    if not is_local(epath.Path(directory)):
        return
    arrays = sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes")) // jax.process_count()
    need = arrays + arrays // 8 + 2**20
    existing = Path(directory)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if need > free:
        raise OSError(errno.ENOSPC, f"No space left on device: it needs {need / 2**20:.1f} MiB, "
                                    f"{free / 2**20:.1f} MiB are free")


def _reason(e: Exception) -> str:
    """Why a checkpoint could not be read, in a line: a checksum's verdict, or the error's start
    (TensorStore's messages go on for pages)."""
    if isinstance(e, CheckpointError):
        return str(e)
    return f"{type(e).__name__}: {first_line(e).split(' See full TensorStore details')[0]}"


class PreemptionGuard:
    """Turns SIGTERM / SIGINT into a request the loop honours at the next step boundary.

    The step in flight finishes, a checkpoint is written and waited for, and the run exits with
    PREEMPTED_EXIT_CODE. A second signal is not caught: it stops the process at once. On several
    hosts Orbax's preemption sync point makes every host stop (and save) at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, manager: ocp.CheckpointManager | None = None):
        self.signal_name = None
        self.manager = manager
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])
        log.warning("%s received: finishing the current step, then saving a checkpoint", self.signal_name)

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1 and self.manager is not None:
            return self.manager.reached_preemption(step)
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Preempted(SystemExit):
    """The run stopped on request after saving a checkpoint; the same command resumes it."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message
