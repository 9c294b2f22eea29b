"""The device mesh, and where every array lives on it.

One mesh with three axes, sized from the config (`mesh.data`, `mesh.fsdp`, `mesh.tensor`; -1
fills an axis with the devices left over):

- data:   the batch is split across it; parameters are replicated along it;
- fsdp:   the batch is split across it too, and so are parameters and optimizer state (their
          `embed` dimension), gathered layer by layer as the step needs them;
- tensor: attention heads and MLP columns (and the vocabulary) are split across it.

Every parameter's axes have logical names (PARAM_AXES: embed, qkv, heads, mlp, vocab, layers);
RULES maps those names to mesh axes. Pure data parallelism, FSDP, tensor
parallelism and their combinations are then one config change, as in MaxText.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gptjax.errors import ConfigError


DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
AXES = (DATA, FSDP, TENSOR)
BATCH = (DATA, FSDP)  # the mesh axes a batch's rows are split over

# Logical axis -> mesh axis. None: replicated.
RULES = {
    "batch": BATCH,
    "embed": FSDP,
    "qkv": TENSOR,
    "heads": TENSOR,
    "mlp": TENSOR,
    "vocab": TENSOR,
    "layers": None,
    "positions": None,
    "labels": None,
}


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves -1 (at most one) to the devices left over, and checks the product."""
    sizes = {axis: int(sizes.get(axis, 1)) for axis in AXES}
    free = [axis for axis, n in sizes.items() if n == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh: only one axis may be -1, got {free}")
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(f"mesh: {num_devices} devices do not divide into the fixed axes {sizes}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ConfigError(f"mesh: data x fsdp x tensor = {sizes} needs {math.prod(sizes.values())} devices, there are {num_devices}")
    return tuple(sizes[axis] for axis in AXES)


def make_mesh(mesh_config=None, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over all devices (of every process); pure data parallel by default."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = dict(mesh_config) if mesh_config is not None else {DATA: -1}
    shape = mesh_shape(sizes, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the data and fsdp axes; every other axis whole."""
    return NamedSharding(mesh, P(BATCH))


# The logical axes of each GPT-2 parameter, by (module, leaf) name; the stacked blocks' leaves
# get a leading "layers" axis. c_proj is told apart by its parent (attn or mlp).
PARAM_AXES = {
    ("wte", "embedding"): ("vocab", "embed"),
    ("wpe", "embedding"): ("positions", "embed"),
    ("c_attn", "kernel"): ("embed", "qkv"),
    ("c_attn", "bias"): ("qkv",),
    ("attn", "c_proj", "kernel"): ("heads", "embed"),
    ("attn", "c_proj", "bias"): ("embed",),
    ("c_fc", "kernel"): ("embed", "mlp"),
    ("c_fc", "bias"): ("mlp",),
    ("mlp", "c_proj", "kernel"): ("mlp", "embed"),
    ("mlp", "c_proj", "bias"): ("embed",),
    ("classifier", "kernel"): ("embed", "labels"),
    ("classifier", "bias"): ("labels",),
    ("score", "kernel"): ("embed", "labels"),
}


def logical_axes(path, ndim: int) -> tuple | None:
    """The logical axes of the array at a pytree path of parameters or of an optimizer state
    that mirrors them (Adam's moments); None for anything else (counts, LayerNorms: replicated)."""
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    if len(names) < 2:
        return None
    axes = PARAM_AXES.get(tuple(names[-3:])) or PARAM_AXES.get(tuple(names[-2:]))
    if axes is None:
        return None
    if names[:2] == ["transformer", "h"]:
        axes = ("layers", *axes)
    return axes if len(axes) == ndim else None


def shardings_for(tree, mesh: Mesh):
    """A NamedSharding for every array of a parameter tree or a train state, by its logical axes.

    An axis that does not divide evenly over its mesh axes stays whole (GPT-2's 50257-token
    vocabulary over a tensor axis of 2, say).
    """

    def sharding_of(path, leaf):
        axes = logical_axes(path, len(getattr(leaf, "shape", ())))
        if axes is None:
            return replicated(mesh)
        spec = [RULES[name] for name in axes]
        # Size-1 axes dropped and trailing Nones trimmed: the canonical form jit's outputs carry,
        # so that a state fed back in matches and the step does not compile again.
        spec = [axis if axis is not None and _axis_size(mesh, axis) > 1 and leaf.shape[i] % _axis_size(mesh, axis) == 0
                else None for i, axis in enumerate(spec)]
        while spec and spec[-1] is None:
            spec.pop()
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(sharding_of, tree)


def constrain(x, *logical):
    """Pins an activation's sharding by logical axes when a mesh is set (jax.set_mesh); else a no-op."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, P(*(RULES[name] if name else None for name in logical)))


def under_mesh(mesh: Mesh, fn):
    """fn called with `mesh` set, so that the model's activation constraints (constrain) apply."""

    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def _axis_size(mesh: Mesh, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[n] for n in names)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = _axis_size(mesh, BATCH)
    if batch_size % n:
        raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of the data x fsdp axes")
    if batch_size % jax.process_count():
        raise ConfigError(f"{what}={batch_size} is not divisible by the {jax.process_count()} processes")


def process_rows(batch_size: int) -> slice:
    """The rows of a global batch this process reads and feeds."""
    per = batch_size // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy batch -> global device arrays split over the batch axes.

    With one process `batch` is the whole batch; with several it is this process's rows
    (process_rows), assembled into the global batch without any host seeing all of it.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * jax.process_count(), *v.shape[1:]))
        for k, v in batch.items()
    }


def to_host(x):
    """A global array (or a tuple or other pytree of them), whole, on every host (gathering across
    processes when there are several), as numpy."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, x)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(x, tiled=True))


def maybe_initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
    """Starts JAX's multi-controller runtime when there are several hosts.

    Explicit flags win; otherwise SLURM (several tasks) and multi-host TPU VMs are detected, and
    jax.distributed.initialize() reads the rest from their environment. One host: nothing to do.
    """
    if coordinator_address:
        # CPU processes (tests, CPU clusters) need a collectives library; GPUs and TPUs ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if slurm_tasks > 1 or "," in tpu_hosts:
        jax.distributed.initialize()
