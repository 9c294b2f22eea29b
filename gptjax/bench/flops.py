"""Model FLOPs of a step, and the peak FLOP/s a device's MFU is measured against: a data sheet's,
or on a CPU a matmul timed beside the steps."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

# The data sheets' peaks live with the other per-device figures, in the plan's targets table.
from gptjax.bench.targets import datasheet_peak


def forward_flops(model_config, head: str, num_labels: int, batch: int, length: int) -> int:
    """Model FLOPs of one forward pass: the matmuls that run, 2 FLOPs per multiply-add.

    With D = n_embd, F = inner_dim (4D), L = n_layer, T = length, B = batch:

        per block and token:    2 * (D*3D  +  D*D  +  D*F  +  F*D)   c_attn, attn.c_proj, c_fc, mlp.c_proj
        per block and row:      2 * T*T*D                            causal attention: Q @ K^T and P @ V
                                                                     (2 * 2*T*T*D each) on the lower
                                                                     triangle only (half)
        head, token task:       2 * D*num_labels per token           classifier
        head, sequence task:    2 * D*num_labels per row             score, on the last token only
        head, causal_lm:        2 * D*vocab per token                the tied projection

        forward = B*T*L*2*(4D^2 + 2DF) + B*L*2*T^2*D + head

    Embedding lookups, LayerNorms, GELU, softmax and the optimizer are not matmuls and are left
    out, as in the usual MFU accounting (PaLM, appendix B). A classification head never runs the
    [D, vocab] projection, so it is not counted.
    """
    d, f, layers = model_config.n_embd, model_config.inner_dim, model_config.n_layer
    tokens = batch * length
    blocks = tokens * layers * 2 * (4 * d * d + 2 * d * f) + batch * layers * 2 * length * length * d
    if head == "token_classification":
        out = tokens * 2 * d * num_labels
    elif head == "sequence_classification":
        out = batch * 2 * d * num_labels
    else:
        out = tokens * 2 * d * model_config.vocab_size
    return blocks + out


def train_flops(model_config, head: str, num_labels: int, batch: int, length: int) -> int:
    """Model FLOPs of one train step: forward, plus a backward of twice the forward (the
    gradients with respect to both the activations and the weights of each matmul)."""
    return 3 * forward_flops(model_config, head, num_labels, batch, length)


PROBE_SIZE = 2048


def peak_probe(dtype: str = "float32", n: int = PROBE_SIZE, repeats: int = 4):
    """A CPU's peak, measured beside the steps: a function that times `repeats` jax [n, n] @ [n, n]
    matmuls and returns the fastest one's FLOP/s (the first after a train step is often the
    slowest). time_steps calls it after each round of synced steps: a virtual machine's speed
    drifts within the hour, and one peak measured before the steps made the MFU of the same code
    move with it (benchmarks/README.md, "MFU")."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()

    def fastest() -> float:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a).block_until_ready()
            seconds.append(time.perf_counter() - start)
        return 2 * n**3 / min(seconds)

    return fastest


def peak_flops(device_kind: str, platform_name: str,
               dtype: str) -> tuple[float | None, str, Callable[[], float] | None]:
    """(peak FLOP/s per device, where it comes from, a peak_probe for time_steps where the peak is
    measured rather than known: a CPU's)."""
    known = datasheet_peak(device_kind)
    if known:
        return *known, None
    if platform_name == "cpu":
        return None, (f"measured: the fastest of 4 jax {dtype} {PROBE_SIZE}^3 matmuls after each round of synced "
                      "steps (the median; mfu pairs each step with the matmuls after it)"), peak_probe(dtype)
    return None, f"unknown device kind {device_kind!r}: no MFU", None
