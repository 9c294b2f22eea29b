"""LoRA adapters (lora.*): each target projection of every block becomes a LoRALinear,
y = x W + b + (alpha / rank) * dropout(x) A B, with A [in, r] random and B [r, out] zero (the model
starts equal to its base). Only A, B and the head train (gptjax/partition.py). merge_lora folds
W + (alpha / r) A B back into plain projections, so an export is an ordinary GPT-2.

The model knows nothing of LoRA: a LoRALinear is a model.Projection with the same call signature,
put in the projection's place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import base_config
from gptjax.dropout import dropout
from gptjax.model import GPT2, Projection
from gptjax.sharding import axes

TARGETS = tuple(base_config().lora.targets)  # every projection LoRA adapts: lora.targets' default
_LORA_KEY_SALT = 0x10A  # the adapters' random init: the train seed, folded with this


class LoRALinear(Projection):
    """A Projection plus a low-rank update: y = x W + b + (alpha / rank) * dropout(x) A B.

    The base parameters keep their names (`kernel`, `bias`), so the Hugging Face key map still
    applies to them; the adapters sit beside them as `lora_a` [in, r] and `lora_b` [r, out]
    (nnx.LoRAParam, a kind of nnx.Param). The base computation is nnx.Linear's own, so with B = 0
    the output is bit for bit the base layer's.
    """

    def __init__(self, in_features: int, out_features: int, kernel_axes: tuple[str, str], *, rank: int, alpha: float,
                 dropout: float, rngs: nnx.Rngs, **linear_kwargs):
        super().__init__(in_features, out_features, kernel_axes, rngs=rngs, **linear_kwargs)
        self.lora_a = adapter_a(lora_a_init(rngs.params(), (in_features, rank)))
        self.lora_b = adapter_b(jnp.zeros((rank, out_features), jnp.float32))
        self.lora_rank, self.lora_alpha, self.lora_dropout = rank, alpha, dropout

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def __call__(self, x, dropout_key=None):  # x: [..., in]; the key drops out the adapter's input
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


def adapter_a(value) -> nnx.LoRAParam:
    """A [..., in, r]; leading axes are stacked layers."""
    return nnx.LoRAParam(value, **axes(*("layers",) * (value.ndim - 2), "lora_in", "lora_rank"))


def adapter_b(value) -> nnx.LoRAParam:
    """B [..., r, out]; leading axes are stacked layers."""
    return nnx.LoRAParam(value, **axes(*("layers",) * (value.ndim - 2), "lora_rank", "lora_out"))


def lora_a_init(key, shape) -> jax.Array:
    """Kaiming-uniform with a = sqrt(5) over the input features, as PEFT and torch's nn.Linear:
    U(-1/sqrt(in), 1/sqrt(in)). `shape` is [..., in, r]; leading axes are stacked layers."""
    bound = 1.0 / math.sqrt(shape[-2])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _adapt(linear: Projection, key, rank: int, alpha: float, dropout: float) -> LoRALinear:
    """A LoRALinear over `linear`'s own parameter objects (no copy), with fresh adapters."""
    kernel_axes = linear.kernel.get_metadata()["out_sharding"][-2:]
    shell = nnx.eval_shape(lambda: LoRALinear(
        linear.in_features, linear.out_features, kernel_axes, rank=rank, alpha=alpha, dropout=dropout,
        use_bias=linear.use_bias, dtype=linear.dtype, rngs=nnx.Rngs(0)))
    shell.kernel, shell.bias = linear.kernel, linear.bias
    lead = tuple(linear.kernel.shape[:-2])  # [n_layer] for the stacked blocks
    shell.lora_a = adapter_a(lora_a_init(key, (*lead, linear.in_features, rank)))
    shell.lora_b = adapter_b(jnp.zeros((*lead, rank, linear.out_features), jnp.float32))
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
