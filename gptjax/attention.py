"""The attention arithmetic of model.py's blocks, on queries, keys and values already projected:
fused (XLA's or cuDNN's kernel), written out with dropout on the probabilities, and over a
decoding KV cache."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gptjax.dropout import dropout


def fused(q, k, v, mask, lengths, implementation):
    if implementation == "cudnn":
        # cuDNN's flash attention takes causality and right padding as lengths, not as a mask.
        try:
            return jax.nn.dot_product_attention(
                q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                implementation="cudnn",
            )
        except Exception:  # noqa: BLE001 - cuDNN refuses some shapes, dtypes and backends (CPU, TPU)
            pass
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


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
