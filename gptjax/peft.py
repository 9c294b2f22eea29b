"""Parameter-efficient fine-tuning: which parameters train (train.freeze), and LoRA adapters (lora.*).

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
  trainable, and merge concatenates them. The model scans the bottom layers apart, under
  stop_gradient (Transformer.frozen_layers), so the backward pass stops at the first block that
  trains, and XLA slices the concatenation away instead of copying it.
- lora.rank > 0: each target projection of every block becomes a LoRALinear, y = x W + b +
  (alpha / rank) * dropout(x) A B, with A [in, r] random and B [r, out] zero (the model starts equal
  to its base). Only A, B and the head train. merge_lora folds W + (alpha / r) A B back into plain
  projections, so an export is an ordinary GPT-2.

LoRA and train.freeze do not combine: LoRA already freezes the whole base model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.dropout import dropout
from gptjax.errors import ConfigError
from gptjax.model import GPT2

FREEZE = ("none", "head_only", "top_k")
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
HEAD_MODULES = ("classifier", "score")
_LORA_KEY_SALT = 0x10A  # the adapters' random init: the train seed, folded with this


def check_config(config) -> None:
    """Refuses a train.freeze / lora.* combination that makes no sense, naming the keys."""
    train, lora = config.train, config.lora
    if train.freeze not in FREEZE:
        raise ConfigError(f"train.freeze={train.freeze!r}: choose one of {', '.join(FREEZE)}")
    k = train.trainable_blocks
    if train.freeze == "top_k":
        if k is None or k < 1:
            raise ConfigError(f"train.freeze='top_k' needs train.trainable_blocks=K >= 1 (the top K blocks train); got {k}")
    elif k is not None:
        raise ConfigError(f"train.trainable_blocks={k} applies only with train.freeze='top_k' (it is {train.freeze!r})")
    if lora.rank < 0:
        raise ConfigError(f"lora.rank={lora.rank}: must be >= 0 (0 turns LoRA off)")
    if not lora.rank:
        return
    if train.freeze != "none":
        raise ConfigError(
            f"lora.rank={lora.rank} with train.freeze={train.freeze!r}: LoRA already freezes the whole base model "
            "(only the adapters and the head train); leave train.freeze='none', or set lora.rank=0"
        )
    if not lora.alpha > 0:
        raise ConfigError(f"lora.alpha={lora.alpha}: must be > 0")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout={lora.dropout}: must be in [0, 1)")
    targets = tuple(lora.targets)
    unknown = [t for t in targets if t not in TARGETS]
    if not targets or unknown or len(set(targets)) != len(targets):
        raise ConfigError(f"lora.targets={targets}: name each of {', '.join(TARGETS)} at most once, and at least one")


# ---------------------------------------------------------------------------------------------
# LoRA


class LoRALinear(nnx.Linear):
    """nnx.Linear plus a low-rank update: y = x W + b + (alpha / rank) * dropout(x) A B.

    The base parameters keep their names (`kernel`, `bias`), so the Hugging Face key map still
    applies to them; the adapters sit beside them as `lora_a` [in, r] and `lora_b` [r, out]
    (nnx.LoRAParam, a kind of nnx.Param). The base computation is nnx.Linear's own, so with B = 0
    the output is bit for bit the base layer's.
    """

    takes_dropout_key = True  # model.py passes the adapter's dropout key to layers that say so

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float, dropout: float,
                 rngs: nnx.Rngs, **linear_kwargs):
        super().__init__(in_features, out_features, rngs=rngs, **linear_kwargs)
        self.lora_a = nnx.LoRAParam(lora_a_init(rngs.params(), (in_features, rank)))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features), jnp.float32))
        self.lora_rank, self.lora_alpha, self.lora_dropout = rank, alpha, dropout

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def __call__(self, x, dropout_key=None):  # x: [..., in]
        y = super().__call__(x)
        x = dropout(x, self.lora_dropout, dropout_key)
        x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        # (x A) B: two thin matmuls, never the [in, out] product, so the backward pass computes no
        # full-size weight gradient. On [B * T, in] rather than [B, T, in]: XLA:CPU runs the
        # backward of the 3-D form (contracting over two axes) about twice as slowly as the whole
        # frozen layer's.
        delta = ((x.reshape(-1, x.shape[-1]) @ a) @ b).reshape(*x.shape[:-1], b.shape[-1])
        return y + delta * jnp.asarray(self.lora_scale, y.dtype)

    def merged_kernel(self) -> jax.Array:
        """W + (alpha / r) A B in float32, for any leading (stacked-layer) axes."""
        delta = jnp.matmul(self.lora_a[...], self.lora_b[...], precision=jax.lax.Precision.HIGHEST)
        return self.kernel[...] + self.lora_scale * delta


def lora_a_init(key, shape) -> jax.Array:
    """Kaiming-uniform with a = sqrt(5) over the input features, as PEFT and torch's nn.Linear:
    U(-1/sqrt(in), 1/sqrt(in)). `shape` is [..., in, r]; leading axes are stacked layers."""
    bound = 1.0 / math.sqrt(shape[-2])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _adapt(linear: nnx.Linear, key, rank: int, alpha: float, dropout: float) -> LoRALinear:
    """A LoRALinear over `linear`'s own parameter objects (no copy), with fresh adapters."""
    shell = nnx.eval_shape(lambda: LoRALinear(
        linear.in_features, linear.out_features, rank=rank, alpha=alpha, dropout=dropout, use_bias=linear.use_bias,
        dtype=linear.dtype, rngs=nnx.Rngs(0)))
    shell.kernel, shell.bias = linear.kernel, linear.bias
    lead = tuple(linear.kernel.shape[:-2])  # [n_layer] for the stacked blocks
    shell.lora_a = nnx.LoRAParam(lora_a_init(key, (*lead, linear.in_features, rank)))
    shell.lora_b = nnx.LoRAParam(jnp.zeros((*lead, rank, linear.out_features), jnp.float32))
    return shell


def add_lora(model: GPT2, rank: int, alpha: float = 16.0, dropout: float = 0.0, targets=TARGETS, seed: int = 0) -> GPT2:
    """Puts LoRA adapters on the target projections of every block (in place); returns the model."""
    key = jax.random.fold_in(jax.random.key(seed), _LORA_KEY_SALT)
    blocks = model.transformer.h
    for i, target in enumerate(targets):
        parent_name, name = target.split(".")
        parent = getattr(blocks, parent_name)
        layer = getattr(parent, name)
        if isinstance(layer, LoRALinear):
            raise ValueError(f"{target} already has a LoRA adapter")
        setattr(parent, name, _adapt(layer, jax.random.fold_in(key, i), rank, alpha, dropout))
    return model


def lora_layers(model) -> dict[tuple, LoRALinear]:
    return {path: m for path, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)}


def merge_lora(model: GPT2) -> GPT2:
    """A plain GPT2 whose target kernels are W + (alpha / r) A B; the model itself if it has no
    adapters. The given model is left as it is."""
    adapted = lora_layers(model)
    if not adapted:
        return model
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for path, layer in adapted.items():
        node = pure
        for part in path:
            node = node[part]
        node["kernel"] = layer.merged_kernel()
        del node["lora_a"], node["lora_b"]
    plain = nnx.eval_shape(lambda: GPT2(model.config, model.head, model.num_labels, model.labels, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(plain)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def adapt(model: GPT2, config) -> GPT2:
    """The model shaped for the config's kind of training: LoRA adapters added, or the frozen
    bottom blocks marked for a scan of their own. In place; returns the model."""
    check_config(config)
    if config.lora.rank:
        lora = config.lora
        return add_lora(model, lora.rank, lora.alpha, lora.dropout, tuple(lora.targets), seed=config.train.seed)
    if config.train.freeze == "top_k":
        n_layer, k = model.config.n_layer, config.train.trainable_blocks
        if k > n_layer:
            raise ConfigError(f"train.trainable_blocks={k} exceeds the model's {n_layer} blocks")
        model.transformer.frozen_layers = n_layer - k
    return model


# ---------------------------------------------------------------------------------------------
# Which parameters train


def _key(part) -> str:
    return str(getattr(part, "key", part))


@dataclasses.dataclass(frozen=True)
class Partition:
    """Splits parameters into (trainable, frozen) and merges them back; see the module docstring.

    mode: "full" (everything trains), "head_only", "top_k" or "lora". frozen_layers: for top_k,
    how many bottom layers of every stacked block parameter stay frozen.
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
                value, f = variable[...], self.frozen_layers
                frozen[path], trainable[path] = variable.replace(value[:f]), variable.replace(value[f:])
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


def partition(config, model: GPT2) -> Partition:
    """The config's partition of `model` (which adapt() has shaped)."""
    check_config(config)
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
