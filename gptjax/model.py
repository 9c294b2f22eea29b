"""GPT-2 in Flax NNX, with the task heads fine-tuning needs.

Parameter names mirror Hugging Face's GPT-2 (`transformer.wte`, `transformer.h.attn.c_attn`, ...),
so hf.py converts checkpoints with a plain key map. The blocks are stacked: every parameter under
`transformer.h` has a leading [n_layer] axis, and the forward pass scans over it: blocks written
out one by one in Python compiled slowly and ran the backward badly on a CPU (DESIGN.md, "Measured
on these machines"). The scan itself may be unrolled (GPT2Config.unroll): on a CPU, where a rolled
loop's slicing copies the stacked weights, activations and gradients, it is by default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import spmd

from gptjax import attention
from gptjax.dropout import dropout
from gptjax.errors import ConfigError
from gptjax import sharding
from gptjax.sharding import axes, constrain

HEADS = ("token_classification", "sequence_classification", "causal_lm")

# The activations Hugging Face's GPT2Config may name. "gelu_new" (GPT-2's own) is the tanh
# approximation; "gelu" is the exact erf form.
ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The architecture of a GPT-2; field names and defaults are Hugging Face's (gpt2 size)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    classifier_dropout: float | None = None  # None: Hugging Face falls back to resid_pdrop
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int | None = None
    # Not in Hugging Face's config: how gptjax computes.
    dtype: str = "float32"  # compute dtype; parameters stay float32
    attention: str = "xla"  # "xla", or "cudnn": cuDNN's flash attention or an error (gptjax/attention.py)
    remat: bool = False  # recompute each block in the backward pass to save activation memory
    # Blocks per iteration of the layer scan: 1 a rolled loop, n_layer none; None the backend's
    # choice (unrolled on a CPU, where the rolled loop's slicing copies arrays, unless remat is on).
    unroll: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"activation_function={self.activation_function!r} is not supported; "
                f"choose one of {sorted(ACTIVATIONS)}"
            )
        if self.unroll is not None and self.unroll < 1:
            raise ConfigError(f"unroll={self.unroll}: at least 1 (a rolled loop)")
        if self.attention not in ("xla", "cudnn"):
            raise ConfigError(f"attention={self.attention!r}: choose 'xla' or 'cudnn'")
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    def layer_unroll(self, platform: str) -> int:
        """Blocks per iteration of the layer loop on `platform`: `unroll` if set, else all of them on
        a CPU (whose rolled loop copies the stacked arrays) and 1 elsewhere. Unrolled, XLA schedules
        remat's recomputed blocks early and keeps them all alive (3x the temporaries of the rolled
        loop): remat stays rolled."""
        return self.unroll or (self.n_layer if platform == "cpu" and not self.remat else 1)

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def head_dropout(self) -> float:
        return self.resid_pdrop if self.classifier_dropout is None else self.classifier_dropout

    def replace(self, **changes) -> GPT2Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def named(cls, name: str, **changes) -> GPT2Config:
        """One of the five released sizes, known without a download ("openai-community/gpt2" works too)."""
        key = name.rsplit("/", 1)[-1]
        if key not in SIZES:
            raise ValueError(f"unknown GPT-2 size {name!r}; known sizes: {', '.join(SIZES)}")
        return cls(**SIZES[key], **changes)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **changes) -> GPT2Config:
        """Reads a Hugging Face GPT-2 config.json (as a dict); `source` names it in errors."""
        model_type = hf.get("model_type")
        if model_type != "gpt2":
            raise ValueError(f"{source}: model_type is {model_type!r}, gptjax loads only 'gpt2'")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise ValueError(f"{source}: {flag}=true is not supported by gptjax")
        if hf.get("scale_attn_weights") is False:
            raise ValueError(f"{source}: scale_attn_weights=false is not supported by gptjax")
        names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
        values = {k: hf[k] for k in names if k in hf}
        return cls(**{**values, **changes})

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face config.json fields of this architecture."""
        out = dataclasses.asdict(self)
        for key in RUNTIME_FIELDS:
            out.pop(key)
        out.update(model_type="gpt2", scale_attn_weights=True, use_cache=True)
        return out

    @classmethod
    def load(cls, path: str) -> GPT2Config:
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f), source=path)


RUNTIME_FIELDS = ("dtype", "attention", "remat", "unroll")  # how gptjax computes, not Hugging Face fields

SIZES = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
}


def _normal(std: float):
    return nnx.initializers.normal(stddev=std)


def _fold(key, salt):
    """A projection's own dropout key, folded from the key its module draws with `salt`: the keys
    the model already draws are untouched, so models without adapters drop out exactly as they did."""
    return None if key is None else jax.random.fold_in(key, salt)


class Projection(nnx.Linear):
    """A block's linear layer, with the logical axes of its kernel (in, out) declared on it and
    its bias (out).

    Every projection is called `layer(x, dropout_key)`. Here the key is unused (and costs nothing
    under jit); a layer that drops out its input overrides __call__ with the same signature
    (gptjax.lora.LoRALinear's adapters), so the model calls every projection the same way."""

    def __init__(self, in_features: int, out_features: int, kernel_axes: tuple[str, str], **linear_kwargs):
        super().__init__(in_features, out_features, kernel_metadata=axes(*kernel_axes),
                         bias_metadata=axes(kernel_axes[1]), **linear_kwargs)

    def __call__(self, x, dropout_key=None):
        del dropout_key
        return super().__call__(x)


class Attention(nnx.Module):
    """Causal multi-head self-attention (gptjax/attention.py: XLA's kernel or cuDNN's)."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        dtype = jnp.dtype(config.dtype)
        self.config = config
        self.c_attn = Projection(d, 3 * d, ("embed", "qkv"), dtype=dtype, kernel_init=_normal(std), rngs=rngs)
        # Residual projections start smaller so the residual stream's variance does not grow
        # with depth (GPT-2 paper, section 2.3; Hugging Face's _init_weights).
        proj_std = std / math.sqrt(2 * config.n_layer)
        self.c_proj = Projection(d, d, ("heads", "embed"), dtype=dtype, kernel_init=_normal(proj_std), rngs=rngs)

    def _qkv(self, x, key):  # [B, T, D] -> q, k, v, each [B, T, H, Dh]
        b, t, _ = x.shape
        cfg = self.config
        q, k, v = jnp.split(self.c_attn(x, _fold(key, 1)), 3, axis=-1)
        return tuple(a.reshape(b, t, cfg.n_head, cfg.head_dim) for a in (q, k, v))

    def __call__(self, x, mask, lengths, keys):  # x: [B, T, D], mask: [B, 1, T, T], lengths: [B]
        b, t, _ = x.shape
        cfg = self.config
        q, k, v = self._qkv(x, _key(keys, 0))
        y = attention.attend(q, k, v, mask, lengths, cfg.attention, cfg.attn_pdrop, _key(keys, 0))
        y = self.c_proj(y.reshape(b, t, cfg.n_embd), _fold(_key(keys, 1), 1))
        return dropout(y, cfg.resid_pdrop, _key(keys, 1))

    def cached(self, x, cache, index, mask):
        """Attention of new tokens over this layer's KV cache, for decoding (see Decoder).

        x: [B, S, D] the new tokens; cache: (k, v), each [B * H, T, Dh]; their keys and values are
        written at columns index .. index + S - 1 (in place: the cache is carried through the
        decode loop). mask: [B, 1, S, T], the columns each new token sees.
        """
        b, s, _ = x.shape
        cfg = self.config
        # [B * H, S, Dh]: the batched matmuls' own layout (one batch axis), so that they read the
        # updated cache as it is. Through a reshape, XLA:CPU fused the update into each reader
        # and copied every layer's cache three times a step.
        q, k, v = (a.transpose(0, 2, 1, 3).reshape(b * cfg.n_head, s, cfg.head_dim) for a in self._qkv(x, None))
        k_cache, v_cache = (jax.lax.dynamic_update_slice(c, a.astype(c.dtype), (0, index, 0))
                            for c, a in zip(cache, (k, v)))
        y = attention.over_cache(q, k_cache, v_cache, mask).astype(x.dtype)  # [B * H, S, Dh]
        y = y.reshape(b, cfg.n_head, s, cfg.head_dim).transpose(0, 2, 1, 3).reshape(b, s, cfg.n_embd)
        return self.c_proj(y), (k_cache, v_cache)


def _key(keys, i):
    return None if keys is None else keys[i]


class MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        d, std = config.n_embd, config.initializer_range
        dtype = jnp.dtype(config.dtype)
        proj_std = std / math.sqrt(2 * config.n_layer)
        self.c_fc = Projection(d, config.inner_dim, ("embed", "mlp"), dtype=dtype, kernel_init=_normal(std), rngs=rngs)
        self.c_proj = Projection(config.inner_dim, d, ("mlp", "embed"), dtype=dtype, kernel_init=_normal(proj_std),
                                 rngs=rngs)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout_rate = config.resid_pdrop

    def __call__(self, x, key):
        y = self.c_proj(self.act(self.c_fc(x, _fold(key, 1))), _fold(key, 2))
        return dropout(y, self.dropout_rate, key)


def _layer_norm(config: GPT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # LayerNorm statistics in float32 whatever the compute dtype: bf16 variance is too coarse.
    return nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, scale_metadata=axes("norm"),
                         bias_metadata=axes("norm"), rngs=rngs)


class Block(nnx.Module):
    """A pre-LayerNorm transformer block."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.ln_2 = _layer_norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, mask, lengths, keys):  # keys: None or [3] dropout keys
        dtype = x.dtype
        x = x + self.attn(self.ln_1(x).astype(dtype), mask, lengths, None if keys is None else keys[:2])
        return x + self.mlp(self.ln_2(x).astype(dtype), _key(keys, 2))

    def cached(self, x, cache, index, mask):  # decoding, no dropout; see Decoder
        dtype = x.dtype
        y, cache = self.attn.cached(self.ln_1(x).astype(dtype), cache, index, mask)
        x = x + y
        return x + self.mlp(self.ln_2(x).astype(dtype), None), cache


class Transformer(nnx.Module):
    """The GPT-2 backbone: embeddings, the stacked blocks and the final LayerNorm."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        std = config.initializer_range
        self.config = config
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, embedding_init=_normal(std),
                             embedding_metadata=axes("vocab", "embed"), rngs=rngs)
        self.wpe = nnx.Embed(config.n_positions, config.n_embd, embedding_init=_normal(std),
                             embedding_metadata=axes("positions", "embed"), rngs=rngs)

        @nnx.split_rngs(splits=config.n_layer)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked_blocks(rngs):
            return Block(config, rngs=rngs)

        self.h = stacked_blocks(rngs)
        self.ln_f = _layer_norm(config, rngs)

    def __call__(self, input_ids, attention_mask, dropout_key=None, frozen_layers=0):  # [B, T] -> [B, T, D]
        """frozen_layers: the bottom blocks that do not train (train.freeze=top_k, gptjax/partition.py).
        They run in a scan of their own under stop_gradient, so the backward pass stops at the
        first trained block."""
        cfg = self.config
        b, t = input_ids.shape
        if t > cfg.n_positions:
            raise ValueError(f"sequence length {t} exceeds n_positions={cfg.n_positions}")
        dtype = jnp.dtype(cfg.dtype)
        x = self.wte(input_ids) + self.wpe(jnp.arange(t))[None]
        keys = None if dropout_key is None else jax.random.split(dropout_key, 1 + 3 * cfg.n_layer)
        x = dropout(x, cfg.embd_pdrop, _key(keys, 0)).astype(dtype)
        x = constrain(x, "batch", None, None)

        # Each query sees earlier real tokens. The diagonal is always open so an all-padding row
        # (the padded tail of an eval batch) still has a finite softmax instead of NaNs.
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        key_real = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, T]
        mask = causal[None, None] & (key_real | jnp.eye(t, dtype=bool)[None, None])
        # At least 1, like the open diagonal: an all-padding row must not be empty.
        lengths = jnp.maximum(jnp.sum(attention_mask, axis=1), 1).astype(jnp.int32)

        graphdef, layers = nnx.split(self.h)
        layer_keys = None if keys is None else keys[1:].reshape(cfg.n_layer, 3, *keys.shape[1:])

        def body(x, layer):
            params, lkeys = layer
            # The residual stream stays split by rows: under FSDP only parameters move.
            return constrain(nnx.merge(graphdef, params)(x, mask, lengths, lkeys), "batch", None, None), None

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        unroll = cfg.layer_unroll(sharding.platform())
        if f := frozen_layers:
            frozen = jax.tree.map(lambda a: jax.lax.stop_gradient(a[:f]), layers)
            x, _ = jax.lax.scan(body, x, (frozen, None if keys is None else layer_keys[:f]), unroll=unroll)
            layers, layer_keys = jax.tree.map(lambda a: a[f:], layers), None if keys is None else layer_keys[f:]
        x, _ = jax.lax.scan(body, x, (layers, layer_keys), unroll=unroll)
        return self.ln_f(x)  # float32


class GPT2(nnx.Module):
    """GPT-2 with one task head: `model(input_ids, attention_mask)` returns the head's logits.

    Heads: "token_classification" -> [B, T, num_labels]; "sequence_classification" -> [B,
    num_labels] from each row's last real token; "causal_lm" -> [B, T, vocab] through `wte`.
    Dropout is on only when a `dropout_key` is given, so evaluation is the default and training
    randomness comes from keys the caller derives (from the seed and the step). `frozen_layers`:
    see Transformer.__call__.
    """

    def __init__(
        self,
        config: GPT2Config,
        head: str = "causal_lm",
        num_labels: int | None = None,
        labels: list[str] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
        if labels is not None:
            labels = tuple(labels)
            if num_labels is not None and num_labels != len(labels):
                raise ValueError(f"num_labels={num_labels} but {len(labels)} label names given")
            num_labels = len(labels)
        if head != "causal_lm" and not num_labels:
            raise ValueError(f"head {head!r} needs num_labels (or label names)")
        self.config = config
        self.head = head
        self.num_labels = num_labels if head != "causal_lm" else None
        self.labels = labels if head != "causal_lm" else None
        self.transformer = Transformer(config, rngs=rngs)
        if head == "token_classification":
            self.classifier = make_head(config, head, num_labels, rngs)
        elif head == "sequence_classification":
            self.score = make_head(config, head, num_labels, rngs)

    def __call__(self, input_ids, attention_mask=None, *, dropout_key=None, frozen_layers=0):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        backbone_key = head_key = None
        if dropout_key is not None:
            backbone_key, head_key = jax.random.split(dropout_key)
        x = self.transformer(input_ids, attention_mask, backbone_key, frozen_layers)  # [B, T, D] float32
        if self.head == "token_classification":
            return self.classifier(dropout(x, self.config.head_dropout, head_key))  # [B, T, num_labels]
        if self.head == "sequence_classification":
            # The last real token under right padding. Hugging Face finds it by comparing ids to
            # pad_token_id, which breaks when the pad id is EOS and EOS occurs in the text.
            positions = jnp.arange(input_ids.shape[1])
            last = jnp.max(jnp.where(attention_mask.astype(bool), positions, 0), axis=1)
            pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]  # [B, D]
            return self.score(pooled)  # [B, num_labels]
        return self.transformer.wte.attend(x)  # [B, T, vocab], tied to the token embedding


class Decoder(nnx.Module):
    """A causal_lm GPT2 arranged for decoding with a KV cache (gptjax/decoding.py).

    It shares the model's embeddings and final LayerNorm, and holds the blocks as separate
    modules, one per layer (copies of the stacked parameters' slices), run one after the other. A
    decode step reads every weight once; out of stacked arrays, XLA:CPU copies each layer's
    weights before its matmuls, which dominated a decode step. Unrolling adds little compile time
    here: there is no backward pass. The copies cost the blocks' memory
    once more while the model is kept beside its Decoder.
    """

    def __init__(self, model: GPT2):
        if model.head != "causal_lm":
            raise ValueError(f"decoding needs the causal_lm head; this model's head is {model.head!r}")
        t = model.transformer
        self.config = model.config
        self.wte, self.wpe, self.ln_f = t.wte, t.wpe, t.ln_f
        graphdef, stacked = nnx.split(t.h)
        self.blocks = nnx.List([nnx.merge(graphdef, _layer(stacked, i)) for i in range(self.config.n_layer)])

    def init_cache(self, batch: int, length: int) -> list:
        """An empty KV cache of `length` columns: per layer (k, v), each [B * H, T, Dh] (rows
        major, then heads) in the compute dtype. Heads before positions: a decode step reads, per
        row and head, T contiguous key vectors. A buffer per layer: each updates in place, with no
        slicing."""
        cfg = self.config
        shape = (batch * cfg.n_head, length, cfg.head_dim)
        return [(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)) for _ in range(cfg.n_layer)]

    def __call__(self, input_ids, positions, cache, index, key_mask):
        """The next-token logits [B, vocab] (float32) after the last new token, and the updated cache.

        input_ids, positions: [B, S], the new tokens and their positions. GPT-2's positions are
        absolute, so a row's position is its own count of earlier real tokens (a left-padded row
        starts at 0 after its padding), as transformers derives them from the attention mask.
        cache: init_cache's; the new tokens' keys and values go to columns index .. index + S - 1.
        key_mask: [B, T], the columns that hold (or will hold) real tokens; a new token sees those
        up to its own column. Only the last position goes through the vocabulary projection, the
        largest matmul of a prefill.
        """
        cfg = self.config
        s, t = input_ids.shape[1], cache[0][0].shape[1]
        x = (self.wte(input_ids) + self.wpe(positions)).astype(jnp.dtype(cfg.dtype))
        x = constrain(x, "batch", None, None)
        causal = jnp.arange(t)[None, :] <= index + jnp.arange(s)[:, None]  # [S, T]
        mask = causal[None, None] & key_mask.astype(bool)[:, None, None, :]  # [B, 1, S, T]
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block.cached(x, layer_cache, index, mask)
            x = constrain(x, "batch", None, None)
            new_cache.append(layer_cache)
        x = self.ln_f(x[:, -1])
        return self.wte.attend(x).astype(jnp.float32), new_cache


def _layer(stacked: nnx.State, i: int) -> nnx.State:
    """Layer i of the stacked blocks' parameters, the "layers" axis gone from their declared axes too."""
    return spmd.remove_axis(jax.tree.map(lambda a: a[i], stacked), 0, {nnx.PARTITION_NAME: "layers"})


def make_head(config: GPT2Config, head: str, num_labels: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A freshly initialised classification head: `classifier` (with bias) or `score` (without)."""
    init = _normal(config.initializer_range)
    use_bias = head == "token_classification"  # as GPT2ForTokenClassification / ...Sequence...
    return nnx.Linear(config.n_embd, num_labels, use_bias=use_bias, kernel_init=init, kernel_metadata=axes("embed", "labels"),
                      bias_metadata=axes("labels"), rngs=rngs)


def init_model(
    size_or_config: str | GPT2Config,
    head: str = "causal_lm",
    num_labels: int | None = None,
    labels: list[str] | None = None,
    seed: int = 0,
    **config_changes,
) -> GPT2:
    """A randomly initialised GPT-2 of a named size or config, initialised as Hugging Face does."""
    config = size_or_config
    if isinstance(config, str):
        config = GPT2Config.named(config)
    config = config.replace(**config_changes)
    return GPT2(config, head, num_labels, labels, rngs=nnx.Rngs(seed))


def abstract_model(size_or_config, head="causal_lm", num_labels=None, **changes) -> GPT2:
    """The model's structure with jax.ShapeDtypeStruct leaves: no weights allocated."""
    return nnx.eval_shape(lambda: init_model(size_or_config, head, num_labels, **changes))


def count_params(model: GPT2, backbone_only: bool = False) -> int:
    """The number of parameters (works on abstract models too)."""
    tree = model.transformer if backbone_only else model
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(tree, nnx.Param)))
