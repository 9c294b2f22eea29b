"""Which parameters train (train.freeze, lora.*), and the checksum of the frozen base.

Every way of training part of the model is one Partition: it splits the parameters, at the train-step
boundary, into a trainable and a frozen pytree. Only the trainable one is in the train state: the
optimizer is initialised on it (a frozen weight has no optimizer state at all, not zeros), the
gradient is taken with respect to it, and checkpoints hold it. The frozen one is an input of the
jitted steps, merged back before the forward pass. It never changes, so checkpoints do not hold it:
resuming rebuilds it from the config (model.name_or_path, or model.init=scratch with train.seed),
and a checksum saved beside the checkpoint proves it is the same base.

- train.freeze="head_only": only the task head (`classifier` / `score`) trains.
- train.freeze="top_k": the top train.trainable_blocks blocks, the final LayerNorm above them and the
  head train. The blocks are stacked (one array per parameter with a leading [n_layer] axis), so
  every `transformer/h/...` array is split: its bottom n_layer - k layers are frozen, its top k
  trainable, and merge concatenates them. The steps run the bottom layers in a scan of their own,
  under stop_gradient (the model's `frozen_layers` argument), so the backward pass stops at the
  first block that trains, and XLA slices the concatenation away instead of copying it.
- lora.rank > 0: LoRA adapters on the blocks' projections (gptjax/lora.py); only they and the
  head train.

LoRA and train.freeze do not combine (config.validate refuses it): LoRA already freezes the
whole base model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.errors import ConfigError
from gptjax.lora import add_lora
from gptjax.model import GPT2

HEAD_MODULES = ("classifier", "score")


def adapt(model: GPT2, config) -> GPT2:
    """The model shaped for the config's (validated) kind of training: LoRA adapters added, or
    the top_k split checked against its blocks. In place; returns the model."""
    if config.lora.rank:
        lora = config.lora
        return add_lora(model, lora.rank, lora.alpha, lora.dropout, tuple(lora.targets), seed=config.train.seed)
    if config.train.freeze == "top_k":
        n_layer, k = model.config.n_layer, config.train.trainable_blocks
        if k > n_layer:
            raise ConfigError(f"train.trainable_blocks={k} exceeds the model's {n_layer} blocks")
    return model


def _key(part) -> str:
    return str(getattr(part, "key", part))


@dataclasses.dataclass(frozen=True)
class Partition:
    """Splits parameters into (trainable, frozen) and merges them back; see the module docstring.

    mode: "full" (everything trains), "head_only", "top_k" or "lora". frozen_layers: for top_k,
    how many bottom layers of every stacked block parameter stay frozen (what the steps pass to
    the model's forward pass).
    """

    mode: str = "full"
    frozen_layers: int = 0

    def role(self, path: tuple[str, ...], variable) -> str:
        """"train", "freeze", or "split" (a stacked block parameter frozen below frozen_layers)."""
        if self.mode == "full" or path[0] in HEAD_MODULES:
            return "train"
        if self.mode == "lora":
            return "train" if isinstance(variable, nnx.LoRAParam) else "freeze"
        if self.mode == "top_k":
            if path[:2] == ("transformer", "ln_f"):
                return "train"
            if path[:2] == ("transformer", "h"):
                return "split" if self.frozen_layers else "train"
        return "freeze"

    def split(self, params: nnx.State) -> tuple[nnx.State, nnx.State]:
        trainable, frozen = {}, {}
        for path, variable in nnx.to_flat_state(params):
            path = tuple(_key(p) for p in path)
            role = self.role(path, variable)
            if role == "split":
                value, f = variable.get_value(), self.frozen_layers
                frozen[path], trainable[path] = (variable.replace(_layers(value, slice(None, f))),
                                                 variable.replace(_layers(value, slice(f, None))))
            else:
                (trainable if role == "train" else frozen)[path] = variable
        return nnx.from_flat_state(trainable), nnx.from_flat_state(frozen)

    def merge(self, trainable: nnx.State, frozen: nnx.State | None = None) -> nnx.State:
        """The whole model's parameters (inside jit too); split's inverse."""
        if not frozen:
            return trainable
        flat = {tuple(_key(p) for p in path): v for path, v in nnx.to_flat_state(frozen)}
        for path, variable in nnx.to_flat_state(trainable):
            path = tuple(_key(p) for p in path)
            if path in flat:  # a split stacked parameter: frozen layers first, then trainable ones
                variable = variable.replace(jnp.concatenate([flat[path][...], variable[...]]))
            flat[path] = variable
        return nnx.from_flat_state(flat)


FULL = Partition()


def _layers(value, rows: slice):
    """value[rows], or for an abstract value (a plan's jax.ShapeDtypeStruct) the same slice's
    shape, with its sharding: the layer axis is never split over the mesh."""
    if isinstance(value, jax.ShapeDtypeStruct):
        n = len(range(*rows.indices(value.shape[0])))
        return jax.ShapeDtypeStruct((n, *value.shape[1:]), value.dtype, sharding=value.sharding)
    return value[rows]


def config_partition(config, model: GPT2) -> Partition:
    """The config's (validated) partition of `model` (which adapt() has shaped)."""
    if config.lora.rank:
        return Partition("lora")
    if config.train.freeze == "head_only":
        if not any(hasattr(model, name) for name in HEAD_MODULES):
            raise ConfigError(f"train.freeze='head_only' needs a head of its own ({' or '.join(HEAD_MODULES)}); the "
                              f"model's {model.head!r} head is the token embedding (wte, tied)")
        return Partition("head_only")
    if config.train.freeze == "top_k":
        return Partition("top_k", model.config.n_layer - config.train.trainable_blocks)
    return FULL


def count(tree) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# The frozen base's identity


@jax.jit
def _sums(tree):
    return jax.tree.map(lambda x: jnp.stack([jnp.sum(jnp.abs(x)), jnp.sum(jnp.square(x))]), tree)


def checksum(frozen: nnx.State) -> dict[str, list[float]] | None:
    """Per frozen parameter, the sums of |x| and x^2: what a checkpoint records of the base it
    was trained on (None when nothing is frozen). Floats, so compared with a tolerance: they catch
    another base model, not a change in one weight."""
    if not frozen:
        return None
    sums = jax.device_get(_sums(nnx.to_pure_dict(frozen)))
    flat = nnx.traversals.flatten_mapping(sums)
    return {"/".join(_key(p) for p in path): [float(v) for v in value] for path, value in sorted(flat.items())}


def check_base(saved: dict | None, current: dict | None, where) -> None:
    """Refuses to combine trainable parameters with a frozen base other than the one they were
    trained on. `saved` is None for checkpoints that record no base (nothing frozen)."""
    if saved == current:
        return
    if saved is None or current is None or saved.keys() != current.keys():
        raise ConfigError(f"{where}: the checkpoint's frozen parameters are not this run's; the config changed what trains")
    for name, before in saved.items():
        if not np.allclose(before, current[name], rtol=1e-4, atol=1e-6):
            raise ConfigError(
                f"{where}: the frozen base model differs from the one the checkpoint was trained on ({name}: "
                f"checksum {before} then, {current[name]} now); point model.name_or_path at the original weights"
            )
