"""The device mesh and where arrays live on it.

One mesh over all devices with a `data` axis: the batch is split across it and the parameters
and optimizer state are replicated (plain data parallelism through jax.jit, not pmap).
"""

from __future__ import annotations

import jax
import numpy as np
from gptjax.config import ConfigError
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh of all (or the given) devices along the `data` axis."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the data axis; every other axis whole."""
    return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.shape[DATA]
    if batch_size % n:
        raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of the data axis")


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy batch -> device arrays, split over the data axis."""
    return jax.device_put(batch, batch_sharding(mesh))
