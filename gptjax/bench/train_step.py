"""Throughput of the real train and eval steps, as records that compare across machines.

    python run.py --config=ner --workdir=/tmp/bench --mode=benchmark --results=benchmarks/results/cpu.jsonl
    python -m gptjax.bench compare benchmarks/results/*.jsonl --out /tmp/compare.png

The benchmark builds the model, optimizer and steps as training does (steps.build_steps, with
LoRA and freezing applied) from the config,
with random weights of the configured size (no download: weights do not change the speed), and
times them on synthetic batches of the config's batch size and sequence length (data.max_length),
every token real. It writes WORKDIR/benchmark.json and appends the same record, one JSON line,
to the --results file. benchmarks/torch_baseline.py writes records of the same form for
transformers' PyTorch GPT-2, so `compare` puts both side by side.
"""

from __future__ import annotations

from pathlib import Path

import logging

import jax
import numpy as np

from gptjax.bench import records
from gptjax.bench.flops import forward_flops, peak_flops, train_flops
from gptjax.bench.timing import peak_rss, prefetch, summarize, time_steps
from gptjax.errors import ConfigError

log = logging.getLogger("gptjax")


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
        from gptjax import partition, sharding
        from gptjax.model import count_params, init_model
        from gptjax.steps import build_steps

        self.shapes = shapes(config)
        self.model_config = model_config_of(config)
        self.mesh = sharding.make_mesh(config.mesh)
        model = init_model(self.model_config, self.shapes["head"], self.shapes["num_labels"], seed=config.train.seed)
        model = partition.adapt(model, config)  # LoRA and freezing as training applies them
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
                  memory_source=memory_source, host_max_rss_bytes=peak_rss())
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


def run(config, workdir, *, config_name: str = "", results: str | None = None, steps: int = 10,
        warmup: int = 2) -> dict:
    """run.py --mode=benchmark: times the config's train and eval steps, writes
    WORKDIR/benchmark.json, appends the record to `results`, and prints it as a table."""
    log.info("building the model, optimizer and steps (random weights) ...")
    bench = GptjaxSteps(config)
    log.info("built %s: %d parameters, batches of %d x %d", config.model.name_or_path or "gpt2", bench.num_params,
             bench.shapes["batch_size"], bench.shapes["seq_len"])
    env = records.environment(bench.mesh)
    peak, peak_source, probe = peak_flops(env["device_kind"], env["platform"], bench.model_config.dtype)
    sync = jax.block_until_ready
    timing = time_steps({"train": (bench.train, bench.batches(), sync)}, warmup=warmup, steps=steps,
                        probe=probe)["train"]
    eval_timing = time_steps({"eval": (bench.predict, bench.batches(eval_=True), sync)}, warmup=2, steps=steps,
                             probe=probe)["eval"]
    log.info("measuring the train step's memory ...")
    record = gptjax_record(bench, config, config_name, timing, eval_timing, env, peak, peak_source)
    record = records.finish(record, workdir, results)
    print(records.format_table([record]))
    return record
