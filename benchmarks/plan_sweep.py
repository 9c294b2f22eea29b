"""What fits where: the largest batch of each config's train step on each target, by plan mode.

    python benchmarks/plan_sweep.py --configs=ner,lm --sizes=gpt2,gpt2-medium,gpt2-large,gpt2-xl \
        --targets=v5e-8,h100x8 --results=benchmarks/results/plan_sweep.jsonl
    python benchmarks/plan_sweep.py --table=benchmarks/results/plan_sweep.jsonl   # README's table

Needs gptjax[plan] (Python >= 3.12); no TPU or GPU. For each config, size and target it compiles the
train step (bfloat16 by default, the config's mesh, model.remat decided as training decides it) at
--max_rows_per_device rows a device, halving them until it fits. Where not even one row a device
fits, plan mode's levers (bench/plan.py) say what does, and the largest batch is searched again
with them. Each setting's largest fitting plan is appended to --results as a record (estimate:
true).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")  # quiets libtpu off a TPU VM (cli.py)

from gptjax.bench import plan, records, targets  # noqa: E402
from gptjax.config import apply_overrides, load_config, validate  # noqa: E402
from gptjax.errors import ConfigError  # noqa: E402

GiB = 2**30


def train_plan(name: str, overrides: dict, target):
    config = validate(apply_overrides(load_config(name), overrides))
    try:
        return plan.plan_config(config, target, programs=("train",), count_flops=False)
    except ConfigError:  # a batch the mesh does not divide
        return None


def largest_batch(name: str, overrides: dict, target, max_rows: int):
    """The plan at the largest batch that fits, of max_rows rows a device halved until one fits
    (None if not even one row does)."""
    rows = max_rows
    while rows >= 1:
        p = train_plan(name, {**overrides, "train.batch_size": str(rows * target.num_devices),
                              "train.eval_batch_size": str(rows * target.num_devices)}, target)
        if p is not None and p["fits"]:
            return p
        rows //= 2
    return None


HEADER = ("config", "model", "target", "largest batch", "remat", "GiB a device (of)", "fits")


def row(record: dict) -> tuple:
    """A README row from a sweep record (plan.plan_record's, with the levers it needed)."""
    target = targets.get(record["target"])
    levers = record.get("sweep_overrides") or {}
    return (record["config"], record["model"], target.name, f"{record['batch_size']} x {record['seq_len']}",
            "on" if record["remat"] else "off",
            f"{record['peak_memory_bytes'] / GiB:.1f} / {target.memory_bytes / GiB:.1f}",
            f"with {plan._flags(levers)}" if levers else "yes")


def markdown(rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="ner,lm")
    parser.add_argument("--sizes", default="gpt2,gpt2-medium,gpt2-large,gpt2-xl")
    parser.add_argument("--targets", default="v5e-8,h100x8")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max_rows_per_device", type=int, default=16)
    parser.add_argument("--results")
    parser.add_argument("--table", help="print the table of the records in this file, compiling nothing")
    args = parser.parse_args()
    if args.table:
        print(markdown([row(r) for r in records.load_records([args.table])]))
        return
    rows = []
    for size in args.sizes.split(","):
        for name in args.configs.split(","):
            for target_name in args.targets.split(","):
                target = targets.get(target_name)
                overrides = {"model.name_or_path": size, "model.dtype": args.dtype}
                start = time.perf_counter()
                best = largest_batch(name, overrides, target, args.max_rows_per_device)
                levers = None
                if best is None:
                    config = validate(apply_overrides(load_config(name), {
                        **overrides, "train.batch_size": str(target.num_devices),
                        "train.eval_batch_size": str(target.num_devices)}))
                    levers = plan.find_fit(config, target)
                    if levers:  # the largest batch with them
                        best = largest_batch(name, {**overrides, **levers}, target, args.max_rows_per_device)
                if best is None:
                    print(f"{name} {size} {target.name}: nothing tried fits ({time.perf_counter() - start:.0f} s)")
                    continue
                record = plan.plan_record(best, name)
                record["sweep_overrides"] = levers or {}
                if args.results:
                    records.finish(record, None, args.results)
                rows.append(row(record))
                print("  ".join(map(str, rows[-1])), f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
