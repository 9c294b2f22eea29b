"""Benchmark records: their fields, the environment they describe, writing and reading them, and
`compare`'s table across records (benchmarks/results/*.jsonl, WORKDIR/benchmark.json; bench/chart.py
draws the chart).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import jax

from gptjax import malloc
from gptjax.errors import DataError

RECORD_FIELDS = {
    "framework": "gptjax, pytorch-eager or pytorch-compile",
    "config": "the config's name (--config)",
    "model": "the GPT-2 size or checkpoint the shapes come from",
    "head": "token_classification, sequence_classification or causal_lm",
    "num_labels": "classes of the head (0 for causal_lm)",
    "num_params": "parameters of the model, head included",
    "batch_size": "rows per train step (over all devices)",
    "seq_len": "tokens per row",
    "dtype": "compute dtype (parameters and optimizer state are float32)",
    "attention": "the attention implementation asked for and, after a colon, what ran",
    "device_kind": "jax's device_kind (a GPU's or TPU's name; 'cpu' on a CPU)",
    "num_devices": "devices the step runs on",
    "platform": "cpu, gpu or tpu",
    "mesh": "the device mesh's axis sizes",
    "host_cpu": "the host CPU's model name and core count",
    "versions": "jax, jaxlib, flax, optax (torch, transformers for a PyTorch record)",
    "xla_flags": "XLA_FLAGS as the run saw it",
    "glibc_tunables": "GLIBC_TUNABLES as the run saw it (gptjax/malloc.py; benchmarks/README.md, Speed on a CPU)",
    "malloc": "the allocator's settings and who chose them: glibc defaults, set by gptjax (its command line), or by the user",
    "load_average": "the host's 1-minute load average during the run (others' work slows a CPU run)",
    "compile_time_s": "tracing, lowering and compiling the train step (the first call's wall time for PyTorch)",
    "step_time_ms": "median train step time, each step timed to block_until_ready",
    "step_time_ms_spread": "min, 25th percentile, 75th percentile and max of those steps",
    "steps_timed": "steps in each timed phase, after warmup_steps more untimed",
    "tokens_per_sec": "batch_size * seq_len / the median step of a training loop's pipelining (each step dispatched before waiting for the one before; time from one step's end to the next's)",
    "samples_per_sec": "rows per second, from the same pipelined steps",
    "median_step_tokens_per_sec": "batch_size * seq_len / step_time_ms: steadier than tokens_per_sec on a busy machine",
    "flops_per_step": "model FLOPs of one train step (train_flops: 3 x forward matmuls and causal attention)",
    "model_tflops_per_sec": "flops_per_step / that median pipelined step, in TFLOP/s (all devices)",
    "peak_flops_per_device": "dense bf16 peak of the device from its data sheet; on a CPU, measured: the median over the rounds of synced steps of the fastest of 4 jax 2048^3 matmuls after each (see peak_source)",
    "peak_flops_spread": "on a CPU, the lowest and highest of those measurements, FLOP/s",
    "peak_source": "where peak_flops_per_device comes from",
    "mfu": "model_tflops_per_sec / (peak_flops_per_device * num_devices); on a CPU, the median over the synced steps of each step's FLOP/s over the peak measured right after it (the machine's drift moves both alike)",
    "peak_memory_bytes": "peak device memory of the run (see memory_source)",
    "memory_source": "device allocator statistics, or XLA's memory analysis of the step where a CPU has none",
    "host_max_rss_bytes": "the process's peak resident memory",
    "compilations_after_warmup": "XLA compilations while the timed steps ran (0: nothing recompiled)",
    "eval": "the eval step (predict) on eval_batch_size rows: compile_time_s, step_time_ms, tokens_per_sec",
    "timestamp": "UTC, when the record was written",
}

# A plan's record (bench/plan.py, --mode=plan) has these fields besides, or in place of, the ones above.
PLAN_FIELDS = {
    "estimate": "true: tokens_per_sec and step_time_ms are a roofline estimate from the program compiled for a "
                "target, never a measurement",
    "target": "the target the train step was compiled for (bench/targets.py)",
    "fits": "whether the train step fits the target's device memory",
    "peak_memory_bytes": "XLA's memory analysis of the train step compiled for the target, a device",
    "compiled_flops": "the compiler's FLOPs of a train step, a device, every layer counted",
}


# A decoding record (bench/decoding.py) has these fields besides, or in place of, the ones above.
DECODING_FIELDS = {
    "benchmark": "generate",
    "batch_size": "prompts a call",
    "prompt_length": "tokens a prompt (all real)",
    "max_new_tokens": "tokens generated a row (EOS off)",
    "seq_len": "prompt_length + max_new_tokens",
    "tokens_per_sec": "batch_size * max_new_tokens / whole-call time, prefill included (median call)",
    "decode_tokens_per_sec": "batch_size * (max_new_tokens - 1) / (whole call - first-token call)",
    "prefill_tokens_per_sec": "batch_size * prompt_length / first-token call",
    "time_to_first_token_ms": "median time of a call with max_new_tokens=1",
    "decode_step_ms": "(whole call - first-token call) / (max_new_tokens - 1)",
    "step_time_ms": "median whole-call time (the column compare shows)",
    "call_time_ms_spread": "min, 25th percentile, 75th percentile and max of the whole calls",
    "compile_time_s": "gptjax: tracing + compiling its program; PyTorch: its first call's wall time",
    "recompiles": "gptjax programs built after the first call, over the timed calls and mixed_requests more "
                  "calls of random sizes inside the bucket (0: no recompiles)",
    "weight_bytes": "parameter bytes a decode step reads (all but the position table)",
    "copy_bandwidth_bytes_per_sec": "memory bandwidth of a large in-place jax update, read + write, this run",
    "memory_bandwidth_fraction": "gptjax at batch 1: weight_bytes / decode_step_ms over copy_bandwidth",
}


def append_record(record: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def load_records(paths) -> list[dict]:
    """Records from benchmark.json files (one object) and results files (one object a line)."""
    records = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
            if text.startswith("{") and "\n{" not in text:
                records.append(json.loads(text))
            else:
                records.extend(json.loads(line) for line in text.splitlines() if line.strip())
        except OSError as e:
            raise DataError(f"{path}: {e.strerror or e}") from None
        except ValueError as e:
            raise DataError(f"{path}: not benchmark records (JSON, one object a line): {e}") from None
    return records


def host_cpu() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def versions() -> dict:
    import flax
    import jaxlib
    import optax

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "python": platform.python_version()}


def environment(mesh) -> dict:
    device = mesh.devices.flat[0]
    return {
        "device_kind": device.device_kind,
        "num_devices": int(mesh.size),
        "platform": device.platform,
        "mesh": {str(k): int(v) for k, v in mesh.shape.items()},
        "host_cpu": host_cpu(),
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "malloc": malloc.setting(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def finish(record: dict, workdir=None, results=None) -> dict:
    """Stamps the record; writes WORKDIR/benchmark.json and appends it to the results file."""
    record["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        (Path(workdir) / "benchmark.json").write_text(text, encoding="utf-8")
    if results:
        append_record(record, results)
    return record


def accelerator(r: dict) -> str:
    kind = r.get("device_kind", "?")
    if kind == "cpu" and r.get("host_cpu"):
        # A CPU run limited to one thread (torch's threads, or XLA's intra-op pool) says so.
        one = r.get("versions", {}).get("torch_threads") == 1 or "intra_op_parallelism_threads=1" in r.get("xla_flags", "")
        kind = f"cpu ({r['host_cpu']}{', 1 thread' if one else ''})"
    return f"{r.get('num_devices', 1)}x {kind}"


def framework_of(r: dict) -> str:
    """The framework, and for a plan's record that its figures are estimates."""
    return r.get("framework", "?") + (" (plan: estimate)" if r.get("estimate") else "")


def format_table(records: list[dict]) -> str:
    """One row a record: accelerator, framework, config, shape, tokens/s, MFU, step time, memory."""
    header = ("accelerator", "framework", "config", "batch x len", "dtype", "tokens/s", "MFU",
              "step ms", "compile s", "memory GiB")
    rows = []
    for r in records:
        mem = r.get("peak_memory_bytes")
        mfu = r.get("mfu")
        est = "~" if r.get("estimate") else ""  # a plan's roofline, not a measurement
        number = lambda x: "-" if x is None else f"{est}{x:.0f}"  # noqa: E731
        rows.append((
            accelerator(r), framework_of(r), r.get("config", ""),
            f"{r.get('batch_size')} x {r.get('seq_len')}", r.get("dtype", ""),
            number(r.get("tokens_per_sec")), "-" if mfu is None else f"{100 * mfu:.1f}%",
            number(r.get("step_time_ms")), "-" if r.get("compile_time_s") is None else f"{r['compile_time_s']:.1f}",
            "-" if mem is None else f"{mem / 2**30:.2f}",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
