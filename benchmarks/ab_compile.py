"""Two compilations of one config's train step, timed in one process, their steps alternating: the
comparison to trust on a noisy machine, where separate processes drift by 10% within the hour.

    python benchmarks/ab_compile.py --config=ner --config.train.batch_size=8 \
        --b='xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED' [--a=...] [--steps=8]

--a and --b are XLA compiler options, `name=value;name=value` (true/false for booleans); the
default --a is XLA's defaults. Prints each variant's median step, its median CPU time, and b / a.
On a CPU, run it under gptjax's malloc settings, as its command line runs:
GLIBC_TUNABLES="$(python -c 'from gptjax import malloc; print(malloc.TUNABLES)')".
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from gptjax.bench.train_step import GptjaxSteps  # noqa: E402
from gptjax.cli import config_overrides  # noqa: E402
from gptjax.config import apply_overrides, load_config  # noqa: E402


def compiler_options(text: str) -> dict:
    options = {}
    for item in filter(None, text.split(";")):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"compiler option {item!r}: write it name=value")
        options[name.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return options


class Variant:
    def __init__(self, config, options: dict):
        self.bench = GptjaxSteps(config)
        self.batches = self.bench.batches()
        s = self.bench.steps
        with jax.set_mesh(self.bench.mesh):
            self.step = s.train_step.lower(s.state, next(self.batches), s.frozen).compile(compiler_options=options or None)

    def __call__(self):
        s = self.bench.steps
        with jax.set_mesh(self.bench.mesh):
            s.state, metrics = self.step(s.state, next(self.batches), s.frozen)
        jax.block_until_ready(metrics)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--a", default="", help="compiler options of variant a (default: XLA's defaults)")
    parser.add_argument("--b", required=True, help="compiler options of variant b")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each variant")
    args, rest = parser.parse_known_args()
    overrides = config_overrides(rest, parser)
    config = apply_overrides(load_config(args.config), overrides)
    options = {"a": compiler_options(args.a), "b": compiler_options(args.b)}
    variants = {name: Variant(config, opts) for name, opts in options.items()}
    for run in variants.values():  # warm-up: the heap settles at two steps' temporaries
        run()
        run()
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, run in variants.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - start_cpu)
    for name, text in (("a", args.a), ("b", args.b)):
        print(f"{name}: median step {statistics.median(wall[name]) * 1e3:.0f} ms (min {min(wall[name]) * 1e3:.0f}, "
              f"max {max(wall[name]) * 1e3:.0f}), median CPU time {statistics.median(cpu[name]):.2f} s  "
              f"[{text or 'XLA defaults'}]")
    ratio = statistics.median(wall["b"]) / statistics.median(wall["a"])
    cpu_ratio = statistics.median(cpu["b"]) / max(statistics.median(cpu["a"]), 1e-9)
    print(f"b / a: step time {ratio:.3f}, CPU time {cpu_ratio:.3f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
