"""Throughput of the real train and eval steps, as records that compare across machines.

    python run.py --config=ner --workdir=/tmp/bench --mode=benchmark --results=benchmarks/results/cpu.jsonl
    python -m gptjax.benchmark compare benchmarks/results/*.jsonl --out /tmp/compare.png

The benchmark builds the model, optimizer and steps as training does (steps.build_steps, with
LoRA and freezing applied) from the config,
with random weights of the configured size (no download: weights do not change the speed), and
times them on synthetic batches of the config's batch size and sequence length (data.max_length),
every token real. It writes WORKDIR/benchmark.json and appends the same record, one JSON line,
to the --results file. benchmarks/torch_baseline.py writes records of the same form for
transformers' PyTorch GPT-2, so `compare` puts both side by side.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import malloc
from gptjax.config import check_generation
from gptjax.errors import ConfigError

log = logging.getLogger("gptjax")

# ---------------------------------------------------------------------------------------------
# The record


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
    "glibc_tunables": "GLIBC_TUNABLES as the run saw it (gptjax/malloc.py; README, Speed on a CPU)",
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


def append_record(record: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def load_records(paths) -> list[dict]:
    """Records from benchmark.json files (one object) and results files (one object a line)."""
    records = []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8").strip()
        if text.startswith("{") and "\n{" not in text:
            records.append(json.loads(text))
        else:
            records.extend(json.loads(line) for line in text.splitlines() if line.strip())
    return records


# ---------------------------------------------------------------------------------------------
# Model FLOPs


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


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s


# Dense (not 2:4 sparse) bf16 matrix peak per device, from the vendors' data sheets. NVIDIA's
# sheets print the sparse figure with a footnote; dense is half of it. Matched against
# jax's device_kind (lower case), first match wins, so the longer names come first.
PEAK_BF16_FLOPS = [
    # NVIDIA H200 data sheet, "BF16 Tensor Core": H200 SXM 1,979 TFLOPS, H200 NVL 1,671 (sparse).
    # https://www.nvidia.com/en-us/data-center/h200/
    ("h200 nvl", 835.5e12, "NVIDIA H200 NVL data sheet (1,671 TFLOPS sparse / 2)"),
    ("h200", 989.5e12, "NVIDIA H200 SXM data sheet (1,979 TFLOPS sparse / 2)"),
    # NVIDIA H100 data sheet, "BF16 Tensor Core": SXM 1,979, PCIe 1,513, NVL 1,671 TFLOPS (sparse).
    # https://www.nvidia.com/en-us/data-center/h100/
    ("h100 pcie", 756.5e12, "NVIDIA H100 PCIe data sheet (1,513 TFLOPS sparse / 2)"),
    ("h100 nvl", 835.5e12, "NVIDIA H100 NVL data sheet (1,671 TFLOPS sparse / 2)"),
    ("h100", 989.5e12, "NVIDIA H100 SXM data sheet (1,979 TFLOPS sparse / 2)"),
    # NVIDIA A100 data sheet, "BF16 Tensor Core": 312 TFLOPS (624 sparse), SXM and PCIe alike.
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    ("a100", 312e12, "NVIDIA A100 data sheet (312 TFLOPS dense)"),
    # Google Cloud TPU system architecture pages, "Peak compute per chip (bf16)".
    # https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e
    ("tpu v4", 275e12, "Cloud TPU v4 docs (275 TFLOPS bf16 per chip)"),
    ("tpu v5 lite", 197e12, "Cloud TPU v5e docs (197 TFLOPS bf16 per chip)"),
    ("tpu v5e", 197e12, "Cloud TPU v5e docs (197 TFLOPS bf16 per chip)"),
    ("tpu v5p", 459e12, "Cloud TPU v5p docs (459 TFLOPS bf16 per chip)"),
    ("tpu v5", 459e12, "Cloud TPU v5p docs (459 TFLOPS bf16 per chip)"),  # v5p's device_kind is "TPU v5"
    ("tpu v6 lite", 918e12, "Cloud TPU v6e docs (918 TFLOPS bf16 per chip)"),
    ("tpu v6e", 918e12, "Cloud TPU v6e docs (918 TFLOPS bf16 per chip)"),
]


def datasheet_peak(device_kind: str) -> tuple[float, str] | None:
    kind = device_kind.lower()
    for name, flops, source in PEAK_BF16_FLOPS:
        if name in kind:
            return flops, source
    return None


PROBE_SIZE = 2048


def peak_probe(dtype: str = "float32", n: int = PROBE_SIZE, repeats: int = 4):
    """A CPU's peak, measured beside the steps: a function that times `repeats` jax [n, n] @ [n, n]
    matmuls and returns the fastest one's FLOP/s (the first after a train step is often the
    slowest). time_steps calls it after each round of synced steps: this virtual machine's speed
    drifts by 10-20% within the hour, and one peak measured before the steps moved the MFU of the
    same code between 64% and 84%."""
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


# ---------------------------------------------------------------------------------------------
# Timing


class CompileCounter:
    """Counts XLA compilations and adds up tracing + lowering + compiling time, via jax.monitoring."""

    _EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
               "/jax/core/compile/backend_compile_duration")
    _instance = None

    def __init__(self):
        self.compiles = 0
        self.seconds = 0.0

    @classmethod
    def get(cls) -> CompileCounter:
        if cls._instance is None:  # one listener per process: jax.monitoring cannot remove one
            cls._instance = cls()
            jax.monitoring.register_event_duration_secs_listener(cls._instance._on_event)
        return cls._instance

    def _on_event(self, name, seconds, **_):
        if name in self._EVENTS:
            self.seconds += seconds
            self.compiles += name == self._EVENTS[-1]


def spread(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {k: round(float(v), 2) for k, v in
            zip(("min", "p25", "p75", "max"), (ms.min(), *np.percentile(ms, [25, 75]), ms.max()))}


def prefetch(batches, put, size: int = 2):
    """Keeps `size` batches already placed on the devices ahead of the one being consumed, so the
    host-to-device copy of the next batch overlaps the running step (flax's prefetch_to_device)."""
    import collections

    queue = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def synthetic_batches(per_token: bool, batch: int, length: int, vocab_size: int, num_labels: int, seed: int = 0):
    """Endless host (numpy) batches in the data pipeline's format, every token real, with a label
    a position (`per_token`) or a row, in [0, num_labels) (a causal LM's 0: a token id); a pool of
    four distinct ones cycled, so making them costs nothing inside the timed loop."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(4):
        shape = (batch, length) if per_token else (batch,)
        pool.append({
            "input_ids": rng.integers(0, vocab_size, (batch, length), dtype=np.int32),
            "attention_mask": np.ones((batch, length), np.int32),
            "labels": rng.integers(0, num_labels or vocab_size, shape, dtype=np.int32),
        })
    i = 0
    while True:
        yield pool[i % len(pool)]
        i += 1


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def warm_up(run_step, batches, sync, steps: int, most: int = 24, memory=peak_rss):
    """`steps` steps dispatched back to back (two in flight, as in the pipelined phase), then more, in pairs,
    while the process's peak memory still grows (at most `most` in all). Two steps in flight hold
    their temporaries at once, and on a CPU the heap takes a dozen steps to settle at that
    footprint: the page faults of that growth made the first timed steps 20% slower. `memory`:
    the process's peak memory now."""
    if steps <= 0:
        return
    n, done = steps, 0
    while True:
        before = memory()
        result = None
        for _ in range(n):
            result = run_step(next(batches))
        sync(result)
        done += n
        if memory() == before or done >= most:
            return
        n = 2


def time_steps(runners: dict, *, warmup: int, steps: int, probe=None) -> dict:
    """Times each runner {name: (run_step, batches, sync)}: a first call (which compiles), warm-up,
    then `steps` each synced to the host (the median and spread), the runners taking turns step
    by step so that a noisy machine slows them alike, then, for each, `steps` pipelined as a
    training loop runs them: each step dispatched before waiting for the one before it, so the
    device never waits for the host; each step's time is from one step's end to the next's
    (`pipelined`), and `pipelined_s` their sum. `sync` must take what run_step returned one step
    earlier, so not a donated state. `probe` (peak_probe), if given, runs after each round of
    synced steps; its results are each runner's `peaks`, one a synced step."""
    counter = CompileCounter.get()
    out = {name: {"steps": steps, "times": []} for name in runners}
    for name, (run_step, batches, sync) in runners.items():
        compiles, seconds, start = counter.compiles, counter.seconds, time.perf_counter()
        sync(run_step(next(batches)))
        first = time.perf_counter() - start
        out[name]["compile_time_s"] = counter.seconds - seconds if counter.compiles > compiles else first
        warm_up(run_step, batches, sync, warmup)
    after_warmup = counter.compiles
    peaks = []
    for _ in range(steps):
        for name, (run_step, batches, sync) in runners.items():
            start = time.perf_counter()
            sync(run_step(next(batches)))
            out[name]["times"].append(time.perf_counter() - start)
        if probe is not None:
            peaks.append(probe())
    for name, (run_step, batches, sync) in runners.items():
        ends, previous = [time.perf_counter()], None
        for _ in range(steps):
            result = run_step(next(batches))
            if previous is not None:
                sync(previous)
                ends.append(time.perf_counter())
            previous = result
        sync(previous)
        ends.append(time.perf_counter())
        out[name]["pipelined"] = [b - a for a, b in itertools.pairwise(ends)]
        out[name]["pipelined_s"] = ends[-1] - ends[0]
    for timing in out.values():
        timing["compilations_after_warmup"] = counter.compiles - after_warmup
        if probe is not None:
            timing["peaks"] = peaks
    return out


def summarize(timing: dict, *, batch: int, length: int, flops: int, peak: float | None, num_devices: int) -> dict:
    """The record's timing fields from time_steps' measurements. Throughput is the pipelined
    steps' median: one stalled step (a busy host, the kernel compacting memory) moved their
    mean by up to 8% on a 2-core VM. Where time_steps measured the peak (`peaks`, a CPU's), MFU
    is the median over the synced steps of each step's FLOP/s over the peak measured right after
    it, so that the machine's drift moves both alike."""
    per_step = statistics.median(timing["pipelined"])
    achieved = flops / per_step
    peaks = timing.get("peaks")
    if peaks:
        mfu = statistics.median(flops / t / (p * num_devices) for t, p in zip(timing["times"], peaks, strict=True))
        measured = {"peak_flops_per_device": round(statistics.median(peaks)),
                    "peak_flops_spread": [round(min(peaks)), round(max(peaks))]}
    else:
        mfu, measured = (achieved / (peak * num_devices) if peak else None), {"peak_flops_spread": None}
    return {
        "compile_time_s": round(timing["compile_time_s"], 3),
        "step_time_ms": round(statistics.median(timing["times"]) * 1e3, 2),
        "step_time_ms_spread": spread(timing["times"]),
        "steps_timed": timing["steps"],
        "tokens_per_sec": round(batch * length / per_step, 2),
        "median_step_tokens_per_sec": round(batch * length / statistics.median(timing["times"]), 2),
        "samples_per_sec": round(batch / per_step, 3),
        "flops_per_step": int(flops),
        "model_tflops_per_sec": round(achieved / 1e12, 4),
        "mfu": None if mfu is None else round(mfu, 4),
        "compilations_after_warmup": timing["compilations_after_warmup"],
        **measured,
    }


# ---------------------------------------------------------------------------------------------
# The environment


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


def environment(mesh) -> dict:
    import flax
    import jaxlib
    import optax

    device = mesh.devices.flat[0]
    return {
        "device_kind": device.device_kind,
        "num_devices": int(mesh.size),
        "platform": device.platform,
        "mesh": {str(k): int(v) for k, v in mesh.shape.items()},
        "host_cpu": host_cpu(),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "python": platform.python_version()},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "malloc": malloc.setting(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def host_max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_memory(mesh, compiled) -> tuple[int | None, str]:
    """Peak bytes in use on the first device, or, where the device keeps no statistics (CPU),
    XLA's memory analysis of the compiled step: arguments + outputs + temporaries - donated."""
    stats = mesh.devices.flat[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return int(total), "XLA memory_analysis of the train step (args + outputs + temps - aliased)"
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None, "unavailable"


# ---------------------------------------------------------------------------------------------
# The benchmark of a config


def model_config_of(config):
    """The config's architecture without a download: a named size (random weights), or a local
    checkpoint's config.json; vocab_size as training would have it."""
    from gptjax.config import model_overrides
    from gptjax.model import SIZES, GPT2Config

    cfg = config.model
    name = cfg.name_or_path or "gpt2"
    if name.rsplit("/", 1)[-1] in SIZES:
        base = GPT2Config.named(name)
    elif (Path(name).expanduser() / "config.json").is_file():
        base = GPT2Config.load(str(Path(name).expanduser() / "config.json"))
    else:
        raise ConfigError(f"model.name_or_path={name!r}: the benchmark needs a GPT-2 size name "
                          f"({', '.join(SIZES)}) or a local directory with config.json; it downloads nothing")
    changes = dict(model_overrides(config))
    changes.update({k: v for k, v in cfg.arch.items() if v is not None})
    if cfg.init == "scratch" and config.tokenizer.name_or_path == "train":
        # A tokenizer trained on the fly: its size, and its EOS (the last id here) as BOS and EOS.
        v = config.tokenizer.vocab_size
        changes.update(vocab_size=v, bos_token_id=v - 1, eos_token_id=v - 1)
    return base.replace(**changes)


def shapes(config) -> dict:
    """What the benchmark runs, from the config: task, head, classes, batch and sequence length."""
    from gptjax import tasks

    task = tasks.get(config.task)
    return {"task": task.name, "head": task.head, "num_labels": task.benchmark_labels, "per_token": task.per_token,
            "batch_size": config.train.batch_size, "eval_batch_size": config.train.eval_batch_size,
            "seq_len": config.data.max_length}


class GptjaxSteps:
    """The config's train and eval steps, built as train_and_evaluate builds them, on random
    weights; `train(batch)` and `predict(batch)` take batches already on the mesh."""

    def __init__(self, config):
        from gptjax import peft, sharding
        from gptjax.model import count_params, init_model
        from gptjax.steps import build_steps

        self.shapes = shapes(config)
        self.model_config = model_config_of(config)
        self.mesh = sharding.make_mesh(config.mesh)
        model = init_model(self.model_config, self.shapes["head"], self.shapes["num_labels"], seed=config.train.seed)
        model = peft.adapt(model, config)  # LoRA and freezing as training applies them
        self.num_params = count_params(model)
        # The schedule's length does not change the step.
        self.steps = build_steps(config, model, self.mesh, total_steps=1_000_000)
        self.put = lambda batch: sharding.put_batch(batch, self.mesh)

    def train(self, batch):
        # The metrics, not the state, whose buffers the next step donates; they are outputs of
        # the same execution, ready when the state is.
        return self.steps.train(batch)

    def predict(self, batch):
        return self.steps.predict(batch)

    def batches(self, eval_: bool = False):
        """Synthetic batches, prefetched to the mesh."""
        s = self.shapes
        rows = s["eval_batch_size"] if eval_ else s["batch_size"]
        host = synthetic_batches(s["per_token"], rows, s["seq_len"], self.model_config.vocab_size, s["num_labels"],
                                 int(eval_))
        return prefetch(host, self.put)

    def compiled_train_step(self, batch):
        s = self.steps
        with jax.set_mesh(self.mesh):
            return s.train_step.lower(s.state, batch, s.frozen).compile()  # from jit's cache after a call


def base_record(framework: str, config, config_name: str, model_config, num_params: int) -> dict:
    s = shapes(config)
    return {
        "framework": framework,
        "config": config_name,
        "model": f"{config.model.name_or_path or 'gpt2'} ({config.model.init}, random weights)",
        "head": s["head"], "num_labels": s["num_labels"], "num_params": int(num_params),
        "batch_size": s["batch_size"], "seq_len": s["seq_len"], "dtype": model_config.dtype,
        "grad_accum_steps": config.train.grad_accum_steps, "remat": model_config.remat,
    }


def gptjax_record(bench: GptjaxSteps, config, config_name: str, timing: dict, eval_timing: dict | None,
                  env: dict, peak: float | None, peak_source: str) -> dict:
    """A record of gptjax's steps from time_steps' measurements."""
    s, mc = bench.shapes, bench.model_config
    compiled = bench.compiled_train_step(next(bench.batches()))
    memory, memory_source = peak_memory(bench.mesh, compiled)
    ran = "cudnn" if "__cudnn$fmha" in (compiled.as_text() or "") else "xla"  # the flash-attention custom call
    record = base_record("gptjax", config, config_name, mc, bench.num_params)
    record.update(env)
    record["attention"] = f"{mc.attention}:{ran}"
    record.update(peak_flops_per_device=peak, peak_source=peak_source, peak_memory_bytes=memory,
                  memory_source=memory_source, host_max_rss_bytes=host_max_rss_bytes())
    record.update(summarize(timing, batch=s["batch_size"], length=s["seq_len"], peak=peak,
                            flops=train_flops(mc, s["head"], s["num_labels"], s["batch_size"], s["seq_len"]),
                            num_devices=env["num_devices"]))
    if eval_timing is not None:
        rows = s["eval_batch_size"]
        e = summarize(eval_timing, batch=rows, length=s["seq_len"], peak=peak, num_devices=env["num_devices"],
                      flops=forward_flops(mc, s["head"], s["num_labels"], rows, s["seq_len"]))
        record["eval"] = {"batch_size": rows, **{k: e[k] for k in ("compile_time_s", "step_time_ms", "tokens_per_sec",
                                                                   "mfu", "compilations_after_warmup")}}
    return record


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


def run(config, workdir, *, config_name: str = "", results: str | None = None, steps: int = 10,
        warmup: int = 2) -> dict:
    """run.py --mode=benchmark: times the config's train and eval steps, writes
    WORKDIR/benchmark.json, appends the record to `results`, and prints it as a table."""
    bench = GptjaxSteps(config)
    env = environment(bench.mesh)
    peak, peak_source, probe = peak_flops(env["device_kind"], env["platform"], bench.model_config.dtype)
    sync = jax.block_until_ready
    timing = time_steps({"train": (bench.train, bench.batches(), sync)}, warmup=warmup, steps=steps,
                        probe=probe)["train"]
    eval_timing = time_steps({"eval": (bench.predict, bench.batches(eval_=True), sync)}, warmup=2, steps=steps,
                             probe=probe)["eval"]
    record = gptjax_record(bench, config, config_name, timing, eval_timing, env, peak, peak_source)
    record = finish(record, workdir, results)
    print(format_table([record]))
    return record


def run_generate(config, workdir, *, config_name: str = "", results: str | None = None, steps: int = 3,
                 warmup: int = 0) -> list[dict]:
    """run.py --mode=benchmark --benchmark=generate: times decoding at generate.batch_size,
    generate.prompt_length and generate.max_new_tokens (random weights of the config's size)
    beside transformers' PyTorch generate when torch is installed; records as run's."""
    import importlib.util

    from gptjax import decoding_benchmark, sharding

    g = config.generate
    check_generation(config, model_config_of(config).n_positions, g.prompt_length)
    with_torch = importlib.util.find_spec("torch") is not None
    if not with_torch:
        log.warning("torch is not installed: gptjax's decoding is timed alone")
    records = decoding_benchmark.run(
        model_config_of(config), model_name=config.model.name_or_path or "gpt2", batch_sizes=(g.batch_size,),
        prompt_length=g.prompt_length, max_new_tokens=g.max_new_tokens, repeats=max(steps, 1), with_torch=with_torch,
        mesh=sharding.make_mesh(config.mesh))
    for record in records:
        record["config"] = config_name
        finish(record, workdir if record["framework"] == "gptjax" else None, results)
    print(format_table(records))
    return records


# ---------------------------------------------------------------------------------------------
# Comparing records


def accelerator(r: dict) -> str:
    kind = r.get("device_kind", "?")
    if kind == "cpu" and r.get("host_cpu"):
        # A CPU run limited to one thread (torch's threads, or XLA's intra-op pool) says so.
        one = r.get("versions", {}).get("torch_threads") == 1 or "intra_op_parallelism_threads=1" in r.get("xla_flags", "")
        kind = f"cpu ({r['host_cpu']}{', 1 thread' if one else ''})"
    return f"{r.get('num_devices', 1)}x {kind}"


def format_table(records: list[dict]) -> str:
    """One row a record: accelerator, framework, config, shape, tokens/s, MFU, step time, memory."""
    header = ("accelerator", "framework", "config", "batch x len", "dtype", "tokens/s", "MFU",
              "step ms", "compile s", "memory GiB")
    rows = []
    for r in records:
        mem = r.get("peak_memory_bytes")
        mfu = r.get("mfu")
        rows.append((
            accelerator(r), r.get("framework", "?"), r.get("config", ""),
            f"{r.get('batch_size')} x {r.get('seq_len')}", r.get("dtype", ""),
            f"{r['tokens_per_sec']:.0f}", "-" if mfu is None else f"{100 * mfu:.1f}%",
            f"{r['step_time_ms']:.0f}", "-" if r.get("compile_time_s") is None else f"{r['compile_time_s']:.1f}",
            "-" if mem is None else f"{mem / 2**30:.2f}",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(records: list[dict], path) -> None:
    """A bar chart of tokens/s a record, each bar labelled with its MFU."""
    try:
        import matplotlib
    except ImportError:  # an extra: nothing else in gptjax needs it
        raise ImportError("the chart needs matplotlib: pip install 'gptjax[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.get('framework')}\n{r.get('config', '')} {r.get('batch_size')}x{r.get('seq_len')}\n"
              + textwrap.fill(accelerator(r), 20) for r in records]
    values = [r["tokens_per_sec"] for r in records]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(records)), 4.5))
    bars = ax.bar(range(len(records)), values, color="tab:blue")
    for bar, r in zip(bars, records):
        mfu = r.get("mfu")
        text = "" if mfu is None else f"MFU {100 * mfu:.1f}%"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(records)), labels, fontsize=7)
    ax.set_ylabel("train tokens / s")
    ax.set_title("gptjax benchmark records")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gptjax.benchmark", description="Compare benchmark records.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="a table (and a PNG chart) across records")
    compare.add_argument("records", nargs="+", help="benchmark.json or results .jsonl files")
    compare.add_argument("--out", default="benchmark_compare.png", help="where to write the chart")
    args = parser.parse_args(argv)
    records = load_records(args.records)
    if not records:
        sys.exit("error: no records in " + ", ".join(args.records))
    print(format_table(records))
    try:
        plot(records, args.out)
    except ImportError as e:
        sys.exit(f"error: {e}")
    print(f"chart: {args.out}")


if __name__ == "__main__":
    main()
