"""The device mesh, and where every array lives on it.

One mesh with three axes, sized from the config (`mesh.data`, `mesh.fsdp`, `mesh.tensor`; -1
fills an axis with the devices left over):

- data:   the batch is split across it; parameters are replicated along it;
- fsdp:   the batch is split across it too, and so are parameters and optimizer state (their
          `embed` dimension), gathered layer by layer as the step needs them;
- tensor: attention heads and MLP columns (and the vocabulary) are split across it.

Every parameter declares the logical names of its axes where it is made (model.py, lora.py:
`kernel_metadata=axes("embed", "mlp")`, Flax's partitioning metadata); RULES maps those names to mesh
axes. Pure data parallelism, FSDP, tensor parallelism and their combinations are then one config
change, as in MaxText.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from flax import nnx
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
    "norm": None,  # LayerNorm scales and biases: small, and needed whole by every row
    # LoRA adapters: r columns per layer, cheaper kept whole than gathered every step.
    "lora_in": None,
    "lora_rank": None,
    "lora_out": None,
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


def axes(*names) -> dict:
    """The metadata that declares a parameter's logical axes, one name per dimension (Flax's
    partitioning metadata, `out_sharding`: `nnx.Linear(..., kernel_metadata=axes("embed", "mlp"))`);
    shardings_for maps them through RULES. Not sharded as it is made (Flax's eager sharding):
    models are built apart from any mesh, and placed on one afterwards."""
    return {"out_sharding": names, "eager_sharding": False}


def logical_axes(variable) -> tuple | None:
    """The logical axes declared on a parameter (or on the optimizer state that mirrors it)."""
    return variable.get_metadata().get("out_sharding") or None


def spec(names, shape, mesh_shape) -> P:
    """The PartitionSpec of an array of `shape` with logical axes `names` on a mesh of
    `mesh_shape` (mesh axis -> size). An axis that does not divide evenly over its mesh axes
    stays whole (GPT-2's 50257-token vocabulary over a tensor axis of 2, say)."""
    if len(names) != len(shape):
        raise ValueError(f"logical axes {names} do not fit an array of shape {tuple(shape)}")
    mesh_axes = [RULES[name] for name in names]
    # Size-1 axes dropped and trailing Nones trimmed: the canonical form jit's outputs carry,
    # so that a state fed back in matches and the step does not compile again.
    mesh_axes = [axis if axis is not None and 1 < _axis_size(mesh_shape, axis) and n % _axis_size(mesh_shape, axis) == 0
                 else None for n, axis in zip(shape, mesh_axes)]
    while mesh_axes and mesh_axes[-1] is None:
        mesh_axes.pop()
    return P(*mesh_axes)


def specs_for(tree, mesh_shape):
    """A PartitionSpec for every array of a parameter tree or a train state (any pytree whose
    parameters are nnx Variables: an nnx.State, Optax's moments of one), by the logical axes
    declared on them; P() (replicated) for arrays with none (step counts)."""

    def spec_of(x):
        if isinstance(x, nnx.Variable) and (names := logical_axes(x)):
            return jax.tree.map(lambda leaf: spec(names, leaf.shape, mesh_shape), x)
        return jax.tree.map(lambda _: P(), x)

    return jax.tree.map(spec_of, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shardings_for(tree, mesh: Mesh):
    """A NamedSharding for every array of a parameter tree or a train state (specs_for's)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs_for(tree, mesh.shape),
                        is_leaf=lambda x: isinstance(x, P))


def constrain(x, *logical):
    """Pins an activation's sharding by logical axes when a mesh is set (jax.set_mesh); else a no-op."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, P(*(RULES[name] if name else None for name in logical)))


def platform() -> str:
    """The platform a program is being built for: that of the mesh set with jax.set_mesh (which
    may be a compile-only TPU or GPU, gptjax/bench/plan.py), else the default backend's. Decisions
    that depend on the hardware read this, never jax.default_backend(), so that a plan compiles
    the program training runs there."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    name = getattr(device, "platform", None) or jax.default_backend()
    return "gpu" if name in ("cuda", "rocm") else name


def under_mesh(mesh: Mesh, fn):
    """fn called with `mesh` set, so that the model's activation constraints (constrain) apply."""

    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def _axis_size(mesh_shape, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh_shape[n] for n in names)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = _axis_size(mesh.shape, BATCH)
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
