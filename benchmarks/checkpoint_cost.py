"""What a checkpoint of a gpt2-size training state costs: size on disk, the time the train loop is
blocked by an asynchronous save (the per-array checksums included), and the full write time it
hides; and the checksums alone, which a restore computes again to verify what it read.

    python benchmarks/checkpoint_cost.py [--size gpt2] [--repeats 3]

The state is what training saves: float32 parameters, AdamW's two moments and the step.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gptjax import sharding
from gptjax.checkpoint import Checkpoints, fingerprints
from gptjax.config import base_config
from gptjax.model import init_model
from gptjax.steps import build_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    state = build_steps(base_config(), init_model(args.size, "token_classification", num_labels=9), sharding.make_mesh(),
                        total_steps=100).state
    # Random moments, as after training: zeros (a fresh AdamW) would compress to nothing on disk.
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    state = jax.tree.map(lambda x: x + 1e-3 * jax.random.normal(next(keys), x.shape, x.dtype)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    blocked, total = [], []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Checkpoints(Path(tmp), keep=2)
        for step in range(1, args.repeats + 1):
            start = time.perf_counter()
            checkpoints.save(step, state, {"progress": {}})
            blocked.append(time.perf_counter() - start)  # the loop could run steps from here on
            checkpoints.wait()
            total.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in (Path(tmp) / "checkpoints" / str(args.repeats)).rglob("*") if p.is_file())
        checkpoints.close()
    fingerprints(state)  # compiled once, as in training
    checksums = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fingerprints(state)
        checksums.append(time.perf_counter() - start)
    b, t = statistics.median(blocked), statistics.median(total)
    print(f"{args.size} training state: {state_bytes / 2**20:.0f} MiB in memory, {size / 2**20:.0f} MiB on disk")
    print(f"save: {b:.2f} s blocking the loop, {t:.2f} s until written (median of {args.repeats}); "
          f"the asynchronous write hides {t - b:.2f} s ({100 * (t - b) / t:.0f}%)")
    print(f"checksums of every array: {statistics.median(checksums):.3f} s (median of {args.repeats}; part of the "
          f"blocking time above, and again when a restore verifies them)")


if __name__ == "__main__":
    main()
