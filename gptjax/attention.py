"""The attention arithmetic of model.py's blocks, on queries, keys and values already projected:
XLA's fused kernel or cuDNN's flash attention (model.attention), written out with dropout on the
probabilities, and over a decoding KV cache.

"cudnn" means cuDNN or an error: where cuDNN's kernel cannot run the program (not a GPU, float32,
dropout on the probabilities in training, a shape it refuses), a ConfigError says what to set,
when the program is traced, instead of XLA's kernel running in its place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gptjax import sharding
from gptjax.dropout import dropout
from gptjax.errors import ConfigError, first_line

CUDNN_DTYPES = ("bfloat16", "float16")  # cuDNN's fused attention has no float32 kernel
USE_XLA = "set --config.model.attention=xla"


def attend(q, k, v, mask, lengths, implementation, rate=0.0, key=None):
    """Causal attention of q, k, v ([B, T, H, Dh]). mask: [B, 1, T, T] (XLA's kernels); lengths: [B]
    real tokens per row (cuDNN's); key: the dropout key in training, None in evaluation."""
    if implementation == "cudnn":
        return cudnn(q, k, v, lengths, rate, training=key is not None)
    if key is not None and rate > 0:
        # dot_product_attention has no dropout on the probabilities; write it out instead.
        return with_dropout(q, k, v, mask, rate, key)
    return fused(q, k, v, mask)


def fused(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def cudnn(q, k, v, lengths, rate=0.0, training=False):
    """cuDNN's flash attention, or a ConfigError naming model.attention; never XLA's kernel instead."""
    refuse_cudnn_where_it_cannot_run(q.dtype, q.shape[1], rate, training)
    try:
        # cuDNN takes causality and right padding as lengths, not as a mask.
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
            implementation="cudnn",
        )
    except (NotImplementedError, ValueError, RuntimeError, SystemError) as e:  # jax's own checks; no cuDNN library
        raise ConfigError(f"model.attention='cudnn': cuDNN's fused attention refuses this program "
                          f"({first_line(e)}); {USE_XLA}") from e


def refuse_cudnn_where_it_cannot_run(dtype, length: int, rate: float, training: bool) -> None:
    """The cases cuDNN's fused attention cannot run, found before jax's own checks (which a
    rolled layer loop's backward pass meets outside cudnn()'s reach)."""
    platform = sharding.platform()
    if platform != "gpu":
        raise ConfigError(f"model.attention='cudnn' runs only on an NVIDIA GPU; this program is built for "
                          f"{platform}: {USE_XLA}")
    if jnp.dtype(dtype).name not in CUDNN_DTYPES:
        raise ConfigError(f"model.attention='cudnn' needs model.dtype bfloat16 or float16, got "
                          f"{jnp.dtype(dtype).name}: set --config.model.dtype=bfloat16 or {USE_XLA}")
    if training and rate > 0:
        # cuDNN's dropout takes a fixed integer seed, not the step's key: its masks would not follow
        # train.seed, nor replay on a resumed run, so gptjax does not use it.
        raise ConfigError(f"model.attention='cudnn' cannot train with dropout on the attention probabilities "
                          f"(attn_pdrop={rate}): set --config.model.dropout=0 or {USE_XLA}")
    if training and length % 2:
        # jax's backward pass of cuDNN attention takes only even lengths.
        raise ConfigError(f"model.attention='cudnn' trains only on even sequence lengths, got {length}: "
                          f"set even data.max_length and data.buckets, or {USE_XLA}")


def over_cache(q, k, v, mask):  # q: [B * H, S, Dh], k, v: [B * H, T, Dh], mask: [B, 1, S, T]
    n, s, t = q.shape[0], q.shape[1], k.shape[1]
    scores = jnp.einsum("nsd,ntd->nst", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    scores = scores.reshape(mask.shape[0], -1, s, t)  # [B, H, S, T]
    probs = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), axis=-1).reshape(n, s, t)
    return jnp.einsum("nst,ntd->nsd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)


def with_dropout(q, k, v, mask, rate, key):
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1), rate, key).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
