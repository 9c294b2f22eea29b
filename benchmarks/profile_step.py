"""Where a CPU train step's time goes, op class by op class: gptjax's (XLA's own profile of the
compiled step) beside the seed's PyTorch recipe (torch.profiler), on the shapes of a gptjax config.

    python benchmarks/profile_step.py --config=ner --config.train.batch_size=8 [--steps 2] [--top 15]

gptjax: every thunk XLA:CPU runs, named by its HLO instruction in the optimized module, summed per
class. Independent thunks run side by side on the CPU's threads, so the classes add up to more
than the wall time when they overlap; the split is what counts. PyTorch: each operator's self
time on the calling thread (intra-op threads work inside it). Run it on a quiet machine, as the
process that runs the step under the settings to compare (under gptjax's malloc settings:
GLIBC_TUNABLES="$(python -c 'from gptjax import malloc; print(malloc.TUNABLES)')").
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DUMP = tempfile.mkdtemp(prefix="gptjax-hlo-")
# Before JAX starts: the optimized HLO names the thunks in the profile.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP} --xla_dump_hlo_as_text".strip()

import jax  # noqa: E402

from gptjax.bench.train_step import GptjaxSteps, model_config_of  # noqa: E402
from gptjax.cli import config_overrides  # noqa: E402
from gptjax.config import apply_overrides, load_config  # noqa: E402

RUNTIME_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ")


def xla_class(name: str, shape: str, opcode: str, body: str) -> str:
    if name.startswith(("ynn_fusion", "xnn_fusion", "onednn")) or opcode in ("dot", "convolution") or " dot(" in body:
        return "matmul"
    if shape.startswith("u32") or "xor" in name or "shift-right" in name:
        return "random bits (dropout)"
    if "dynamic-update-slice" in name or "dynamic-slice" in name:
        return "layer-scan slicing"
    if "copy" in name or "transpose" in name or "concatenate" in name or opcode in ("copy", "transpose"):
        return "copies, transposes, concatenation"
    if name.startswith("wrapped_broadcast") or opcode == "broadcast":
        return "fills (broadcast)"
    if "reduce" in name or opcode == "reduce":
        return "reductions"
    return "elementwise (norms, activations, softmax, optimizer, loss)"


def hlo_index(text: str) -> dict:
    """instruction name -> (shape, opcode, the fused computation's text)."""
    computations, current = {}, None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    index = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if m:
            called = re.search(r"calls=%?([\w.\-]+)", line)
            body = "\n".join(computations.get(called.group(1), [])) if called else ""
            index.setdefault(m.group(1), (m.group(2), m.group(3), body))
    return index


def profile_gptjax(config, steps: int) -> tuple[dict, float]:
    bench = GptjaxSteps(config)
    batches = bench.batches()
    for _ in range(3):
        jax.block_until_ready(bench.train(next(batches)))
    trace_dir = tempfile.mkdtemp(prefix="gptjax-trace-")
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(bench.train(next(batches)))
    wall = (time.perf_counter() - start) / steps
    modules = sorted(glob.glob(f"{DUMP}/*jit_train_step*after_optimizations.txt"))
    index = hlo_index(Path(modules[-1]).read_text())
    trace = json.load(gzip.open(glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz")[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(RUNTIME_EVENTS) or name not in index:
            continue
        shape, opcode, body = index[name]
        if opcode in ("while", "call", "conditional"):
            continue  # their thunks are counted one by one
        totals[xla_class(name, shape, opcode, body)] += event["dur"] / 1e3 / steps
    return dict(totals), wall * 1e3


TORCH_CLASSES = (
    ("matmul", ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_dot_product", "dot")),
    ("random bits (dropout)", ("bernoulli", "native_dropout", "dropout", "uniform")),
    ("optimizer", ("_foreach", "adamw", "_fused_adam", "linalg_vector_norm", "clip")),
    ("copies, transposes, concatenation", ("copy", "clone", "contiguous", "cat", "t", "transpose", "to", "_to_copy")),
    ("fills (zeros)", ("zero", "fill", "zeros", "empty", "ones")),
)


def torch_class(op: str) -> str:
    base = op.removeprefix("aten::").lower()
    for cls, names in TORCH_CLASSES:
        if any(base == n or base.startswith(n + "_") or base.startswith(n) and n.startswith("_") for n in names):
            return cls
    return "elementwise (norms, activations, softmax, loss)"


def profile_torch(config, steps: int) -> tuple[dict, float]:
    import torch
    from torch_baseline import TorchSteps

    run = TorchSteps(config, model_config_of(config), compile_model=False)
    batches = run.batches()
    for _ in range(3):
        run.train(next(batches))
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run.train(next(batches))
    wall = (time.perf_counter() - start) / steps
    totals = collections.Counter()
    for event in prof.events():
        if not event.name.startswith("aten::") or event.self_cpu_time_total <= 0:
            continue
        parent, in_step = event.cpu_parent, False
        while parent is not None and not in_step:  # torch's CPU AdamW is a loop of plain aten ops
            in_step, parent = parent.name.startswith("Optimizer.step"), parent.cpu_parent
        totals["optimizer" if in_step else torch_class(event.name)] += event.self_cpu_time_total / 1e3 / steps
    return dict(totals), wall * 1e3


def show(title: str, totals: dict, wall_ms: float):
    total = sum(totals.values())
    print(f"\n{title}: {wall_ms:.0f} ms a step (wall, under the profiler); classes sum to {total:.0f} ms")
    for cls, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {cls:58s} {ms:8.0f} ms  {100 * ms / total:5.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    args, rest = parser.parse_known_args()
    overrides = config_overrides(rest, parser)
    config = apply_overrides(load_config(args.config), overrides)
    print(f"load average {os.getloadavg()[0]:.2f}; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')!r}")
    show("gptjax (XLA thunks)", *profile_gptjax(config, args.steps))
    if not args.no_torch:
        show("PyTorch eager (aten operators, self time)", *profile_torch(config, args.steps))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
