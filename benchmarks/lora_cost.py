"""What training part of the model saves: trainable parameters, optimizer state, memory and step time
of full fine-tuning against LoRA (and the freezing modes), on this machine.

    python benchmarks/lora_cost.py [--size gpt2-medium] [--batch 8] [--length 128] [--steps 3]
                                   [--modes full lora] [--rank 8]

Each mode runs in a process of its own (so that its peak resident memory is its own): the real
jitted train step (AdamW, token classification, float32, random weights: nothing is downloaded),
compiled ahead of time for XLA's memory analysis, then timed over --steps steps after one warm-up
step (the median, with block_until_ready).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = {
    "full": {},
    "lora": {"lora.rank": "{rank}"},
    "head_only": {"train.freeze": "head_only"},
    "top_k": {"train.freeze": "top_k", "train.trainable_blocks": "{blocks}"},
}


def measure(args) -> dict:
    import jax
    import numpy as np

    from gptjax import partition, sharding
    from gptjax.config import apply_overrides, base_config
    from gptjax.model import init_model
    from gptjax.steps import build_steps

    overrides = {k: v.format(rank=args.rank, blocks=args.blocks) for k, v in MODES[args.one].items()}
    config = apply_overrides(base_config(), overrides)
    model = partition.adapt(init_model(args.size, "token_classification", num_labels=9, seed=0), config)
    mesh = sharding.make_mesh()
    steps = build_steps(config, model, mesh, total_steps=1000)
    state, frozen = steps.state, steps.frozen
    del model
    rng = np.random.default_rng(0)
    batch = sharding.put_batch({
        "input_ids": rng.integers(0, 50257, (args.batch, args.length), dtype=np.int32),
        "attention_mask": np.ones((args.batch, args.length), np.int32),
        "labels": rng.integers(0, 9, (args.batch, args.length), dtype=np.int32),
    }, mesh)
    start = time.perf_counter()
    compiled = steps.train_step.lower(state, batch, frozen).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, frozen)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    return {
        "mode": args.one,
        "trainable_params": partition.count(state.params),
        "total_params": partition.count(state.params) + partition.count(frozen),
        "param_bytes": nbytes(state.params) + nbytes(frozen),
        "opt_state_bytes": nbytes(state.opt_state),
        "xla_temp_bytes": memory.temp_size_in_bytes if memory else None,
        "xla_peak_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                           + memory.temp_size_in_bytes) if memory else None,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "compile_s": compile_s,
        "step_s": step_s,
        "tokens_per_s": args.batch * args.length / step_s,
        "loss": float(metrics["loss"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-medium")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=2, help="trainable blocks for top_k")
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=list(MODES))
    parser.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return

    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, f"--one={mode}", f"--size={args.size}", f"--batch={args.batch}",
               f"--length={args.length}", f"--steps={args.steps}", f"--rank={args.rank}", f"--blocks={args.blocks}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    mib = lambda b: f"{b / 2**20:,.0f}" if b is not None else "-"  # noqa: E731
    print(f"{args.size}, batch {args.batch} x {args.length}, float32, AdamW, median of {args.steps} steps "
          f"(lora.rank={args.rank}, top_k blocks={args.blocks})")
    print(f"{'mode':<10} {'trainable':>12} {'of total':>12} {'opt state MiB':>14} {'XLA peak MiB':>13} "
          f"{'XLA temp MiB':>13} {'max RSS MiB':>12} {'step s':>8} {'tokens/s':>9} {'compile s':>10}")
    for r in rows:
        print(f"{r['mode']:<10} {r['trainable_params']:>12,} {r['total_params']:>12,} {mib(r['opt_state_bytes']):>14} "
              f"{mib(r['xla_peak_bytes']):>13} {mib(r['xla_temp_bytes']):>13} {mib(r['max_rss_bytes']):>12} "
              f"{r['step_s']:>8.2f} {r['tokens_per_s']:>9.0f} {r['compile_s']:>10.1f}")


if __name__ == "__main__":
    main()
