"""The PyTorch baseline: the seed's recipe (transformers' GPT2ForTokenClassification, torch AdamW,
gradient clipping) timed on the shapes of a gptjax config, written as gptjax benchmark records.

    python benchmarks/torch_baseline.py --config=ner --config.train.batch_size=8 \\
        --results=benchmarks/results/cpu.jsonl [--compile] [--with-gptjax]

--compile adds a torch.compile'd model beside eager. --with-gptjax also builds gptjax's train step
from the same config (gptjax.bench.train_step.GptjaxSteps, as `run.py --mode=benchmark` does) and runs
all of them in one process, taking turns step by step, so that a noisy machine slows each alike;
it prints the median step times and their ratios. Records go to --results (one JSON line each),
for `python -m gptjax.bench compare`. The MFU of every record is against the same peak: the
data sheet's on an accelerator; on a CPU jax matmuls timed after each round of steps, each step's
MFU against the peak measured right after it (gptjax.bench.flops.peak_probe).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from gptjax import malloc, tasks  # noqa: E402
from gptjax.bench import records as bench_records  # noqa: E402
from gptjax.bench import timing as bench_timing  # noqa: E402
from gptjax.bench import train_step  # noqa: E402
from gptjax.bench.flops import peak_flops, train_flops  # noqa: E402
from gptjax.cli import config_overrides  # noqa: E402
from gptjax.config import apply_overrides, load_config  # noqa: E402


class TorchSteps:
    """transformers' GPT-2 with the head of the config's task, AdamW and clipping, on random weights."""

    def __init__(self, config, model_config, *, compile_model: bool):
        cfg = config.train
        s = train_step.shapes(config)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.shapes, self.model_config = s, model_config
        labels = {"num_labels": s["num_labels"]} if s["num_labels"] else {}  # a causal LM has no classes
        hf = transformers.GPT2Config(**model_config.to_hf_dict(), **labels)
        hf.pad_token_id = hf.eos_token_id  # sequence classification needs one for batches
        cls = getattr(transformers, tasks.get(s["task"]).architecture)  # the class an export of the task loads as
        torch.manual_seed(cfg.seed)
        self.model = cls(hf).to(self.device).train()
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.attention = self.model.config._attn_implementation
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_b1, cfg.adam_b2),
            eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
        )
        self.max_grad_norm = cfg.max_grad_norm
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.autocast = model_config.dtype != "float32"

    def train(self, batch):
        with torch.autocast(self.device.type, dtype=getattr(torch, self.model_config.dtype), enabled=self.autocast):
            loss = self.forward(**batch).loss
        loss.backward()
        if self.max_grad_norm:  # 0: no clipping, as in gptjax (torch would zero the gradients)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def sync(self, _):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def batches(self):
        s = self.shapes
        host = train_step.synthetic_batches(s["per_token"], s["batch_size"], s["seq_len"], self.model_config.vocab_size,
                                           s["num_labels"])
        for batch in host:
            yield {k: torch.from_numpy(v).long().to(self.device, non_blocking=True) for k, v in batch.items()}


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        kind, platform = torch.cuda.get_device_name(device), "gpu"
    else:
        kind, platform = "cpu", "cpu"
    import platform as py_platform

    return {
        "device_kind": kind, "num_devices": 1, "platform": platform, "mesh": {},
        "host_cpu": bench_records.host_cpu(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": py_platform.python_version(), "torch_threads": torch.get_num_threads()},
        "xla_flags": "", "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "malloc": malloc.setting(), "load_average": round(os.getloadavg()[0], 2),
    }


def torch_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n)
    a @ a
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def torch_record(steps: TorchSteps, framework, config, config_name, timing, peak, peak_source) -> dict:
    s, mc = steps.shapes, steps.model_config
    record = train_step.base_record(framework, config, config_name, mc, steps.num_params)
    record.update(environment(steps.device))
    record["attention"] = f"transformers:{steps.attention}"
    record.update(peak_flops_per_device=peak, peak_source=peak_source)
    record.update(bench_timing.summarize(timing, batch=s["batch_size"], length=s["seq_len"], peak=peak, num_devices=1,
                                         flops=train_flops(mc, s["head"], s["num_labels"], s["batch_size"],
                                                           s["seq_len"])))
    # Compilations are XLA's; torch.compile's recompilations show in its own logs.
    record["compilations_after_warmup"] = None
    if steps.device.type == "cuda":
        memory, source = torch.cuda.max_memory_allocated(steps.device), "torch.cuda.max_memory_allocated"
    else:
        memory, source = None, "PyTorch keeps no CPU allocator statistics (see host_max_rss_bytes)"
    record.update(peak_memory_bytes=memory, memory_source=source, host_max_rss_bytes=bench_timing.peak_rss())
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--results", help="a JSONL file to append the records to")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--no-eager", action="store_true", help="leave out the eager model")
    parser.add_argument("--with-gptjax", action="store_true", help="interleave gptjax's train step")
    args, rest = parser.parse_known_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps: at least 1 timed step (the figures are their medians); --warmup: not negative")
    overrides = config_overrides(rest, parser)
    config = apply_overrides(load_config(args.config), overrides)
    model_config = train_step.model_config_of(config)

    gptjax = train_step.GptjaxSteps(config) if args.with_gptjax else None
    device_kind = torch.cuda.get_device_name() if torch.cuda.is_available() else jax.devices()[0].device_kind
    platform = "gpu" if torch.cuda.is_available() else jax.devices()[0].platform
    peak, peak_source, probe = peak_flops(device_kind, platform, model_config.dtype)

    runners, steps = {}, {}
    if gptjax is not None:
        runners["gptjax"] = (gptjax.train, gptjax.batches(), jax.block_until_ready)
    for framework, compile_model in (("pytorch-eager", False), ("pytorch-compile", True)):
        if (compile_model and not args.compile) or (not compile_model and args.no_eager):
            continue
        steps[framework] = TorchSteps(config, model_config, compile_model=compile_model)
        runners[framework] = (steps[framework].train, steps[framework].batches(), steps[framework].sync)
    timings = bench_timing.time_steps(runners, warmup=args.warmup, steps=args.steps, probe=probe)

    records = []
    if gptjax is not None:
        env = bench_records.environment(gptjax.mesh)
        records.append(train_step.gptjax_record(gptjax, config, args.config, timings["gptjax"], None, env, peak,
                                               peak_source))
    for framework, s in steps.items():
        record = torch_record(s, framework, config, args.config, timings[framework], peak, peak_source)
        if s.device.type == "cpu":
            record["torch_matmul_flops"] = round(torch_matmul_flops())
        records.append(record)
    for record in records:
        record["interleaved_with"] = sorted(set(runners) - {record["framework"]})
        bench_records.finish(record, results=args.results)
    print(bench_records.format_table(records))
    medians = {name: statistics.median(t["times"]) for name, t in timings.items()}
    for name, median in medians.items():
        spread = bench_timing.spread(timings[name]["times"])
        print(f"{name:16s} median step {median * 1e3:8.0f} ms  (min {spread['min']:.0f}, max {spread['max']:.0f})")
    if "gptjax" in medians:
        for name in steps:
            print(f"gptjax / {name} tokens/s (ratio of median step times): {medians[name] / medians['gptjax']:.2f}x")


if __name__ == "__main__":
    main()
