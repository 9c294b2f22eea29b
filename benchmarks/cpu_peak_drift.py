"""Does a train step leave a CPU slower, or does the machine drift by itself? The question behind
pairing each step with the peak measured right after it (gptjax.bench.flops.peak_probe, benchmarks/README.md, "MFU").

    python benchmarks/cpu_peak_drift.py --config=ner --config.train.batch_size=8 [--rounds=3]

Each round probes the peak (the fastest of 4 jax 2048^3 matmuls) three times: after 15 s at rest,
right after 4 train steps, and after 15 s of back-to-back matmuls. Then a matmul loop is timed in
2-second windows beside the hypervisor's steal time from /proc/stat (Linux). Run it on a quiet
machine, under gptjax's malloc settings as its command line runs:
GLIBC_TUNABLES="$(python -c 'from gptjax import malloc; print(malloc.TUNABLES)')".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from gptjax.bench.flops import PROBE_SIZE, peak_probe  # noqa: E402
from gptjax.bench.timing import warm_up  # noqa: E402
from gptjax.bench.train_step import GptjaxSteps  # noqa: E402
from gptjax.cli import config_overrides  # noqa: E402
from gptjax.config import apply_overrides, load_config  # noqa: E402

PAUSE_S = 15


def cpu_times() -> list[int]:
    """/proc/stat's first line: user, nice, system, idle, iowait, irq, softirq, steal, ..."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=12, help="2-second windows of the matmul loop")
    args, rest = parser.parse_known_args()
    if args.rounds < 1 or args.windows < 0:
        parser.error("--rounds: at least 1; --windows: not negative")
    config = apply_overrides(load_config(args.config), config_overrides(rest, parser))
    probe = peak_probe()
    bench = GptjaxSteps(config)
    batches = bench.batches()
    warm_up(bench.train, batches, jax.block_until_ready, 2)

    def train_steps():
        for _ in range(4):
            jax.block_until_ready(bench.train(next(batches)))

    def matmuls(seconds):
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            probe()

    conditions = {"at rest": lambda: time.sleep(PAUSE_S), "after 4 train steps": train_steps,
                  "after matmuls": lambda: matmuls(PAUSE_S)}
    peaks = {name: [] for name in conditions}
    for k in range(args.rounds):
        for name, before in conditions.items():
            before()
            peaks[name].append(probe() / 1e9)
        print(f"round {k + 1}: " + ", ".join(f"{name} {p[-1]:.0f}" for name, p in peaks.items()) + " GFLOP/s",
              flush=True)
    for name, p in peaks.items():
        print(f"{name:20s} median {statistics.median(p):.0f} GFLOP/s, {min(p):.0f}-{max(p):.0f}")

    n = PROBE_SIZE
    for _ in range(args.windows):
        before, start, count = cpu_times(), time.perf_counter(), 0
        while time.perf_counter() - start < 2:
            probe()
            count += 4  # a probe times 4 matmuls
        seconds, after = time.perf_counter() - start, cpu_times()
        delta = [b - a for a, b in zip(before, after)]
        print(f"2-s window: matmul loop {2 * n**3 * count / seconds / 1e9:.0f} GFLOP/s, "
              f"steal {delta[7] / sum(delta):.1%} of the CPU time")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
