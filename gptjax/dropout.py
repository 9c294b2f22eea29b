"""Dropout whose random bits cost almost nothing: Threefry-2x32 (Random123, the generator JAX's keys
use) written in jax.numpy, one hash of each element's own index under the call's key.

jax.random.bits computes the same hash as an opaque primitive that XLA cannot fuse, and on a CPU
it was a visible share of a train step. Written out as integer ops, XLA fuses the hash into the
dropout's own elementwise loop and vectorises it, and the bits are never stored. The counters are global indices, so a sharded activation draws the same
bits as an unsharded one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_WORD = 1 << 32


def threefry_2x32(key, x0, x1):
    """Threefry-2x32 with 20 rounds: key (k0, k1) uint32 scalars, x0, x1 the counter words (uint32
    arrays of one shape); the two random words. Equal to jax.extend.random.threefry2x32_p."""
    k0, k1 = key
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _counters(shape):
    """Each element's index in row-major order as two uint32 words (low, high): the trailing axes
    whose product fits 32 bits give the low word, the leading ones the high word."""
    split = next(k for k in range(len(shape) + 1) if math.prod(shape[k:]) < _WORD)
    if math.prod(shape[:split]) >= _WORD:
        raise ValueError(f"dropout: cannot number the elements of an array of shape {shape}")

    def flat(axes):
        index, stride = jnp.zeros(shape, jnp.uint32), 1
        for axis in reversed(axes):
            index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
            stride *= shape[axis]
        return index

    return flat(range(split, len(shape))), flat(range(split))


def _key_words(key):
    data = jax.random.key_data(key)
    if data.shape == (2,) and data.dtype == jnp.uint32:
        return data[0], data[1]
    words = jax.random.bits(key, (2,), jnp.uint32)  # another PRNG implementation's key
    return words[0], words[1]


def dropout(x, rate: float, key):
    """x with each element zeroed with probability `rate` (rounded to a multiple of 2^-32) and the
    others scaled by the inverse of the kept fraction, so the expectation is x; x itself when `key`
    is None (evaluation) or rate is 0."""
    if key is None or rate == 0:
        return x
    threshold = min(round(rate * _WORD), _WORD - 1)
    bits, _ = threefry_2x32(_key_words(key), *_counters(x.shape))
    scale = jnp.asarray(_WORD / (_WORD - threshold), x.dtype)
    return jnp.where(bits >= jnp.uint32(threshold), x * scale, jnp.zeros((), x.dtype))
