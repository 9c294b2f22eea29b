"""Decoding throughput: gptjax's Generator on random weights of one size (weights do not change the
speed; nothing is downloaded), beside other frameworks' runners on the same shapes
(benchmarks/torch_decoding.py: transformers' PyTorch generate).

    python benchmarks/generate.py --model=gpt2 --batch_sizes=1,16 --prompt_length=128 --max_new_tokens=128
    python run.py --config=lm_demo --workdir=/tmp/bench --mode=benchmark --benchmark=generate

Every runner decodes greedily, with EOS off (PyTorch: min_new_tokens), so every call makes exactly
max_new_tokens tokens a row. A call is timed whole, as a user sees it: prefill, decode loop and
the tokens back on the host. The same call with one new token times the prefill (time to first
token); the difference is the decode loop. gptjax compiles one program for the benchmark's bucket,
which serves both calls. The frameworks take turns call by call, so that a busy machine slows each
alike. run() returns one record (a dict) a framework and batch size (records.DECODING_FIELDS), in
the form of the step benchmark's records, so `python -m gptjax.bench compare` lists them.
"""

from __future__ import annotations

import logging
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.bench.records import environment, finish, format_table
from gptjax.bench.timing import CompileCounter, peak_rss, spread
from gptjax.bench.train_step import model_config_of
from gptjax.config import check_generation
from gptjax.decoding import Buckets, Generator, compilations
from gptjax.model import count_params, init_model

log = logging.getLogger("gptjax")
def random_prompts(batch: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length)).tolist()


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes per second read and written by x + 1 over a large float32 array updated in place (its
    buffer donated, so no fresh memory is touched): the machine's practical memory bandwidth."""
    step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    x = step(jnp.zeros(nbytes // 4, jnp.float32)).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = step(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


class GptjaxDecoding:
    """Generator over random weights, its buckets exactly the benchmark's shapes: one program."""

    framework = "gptjax"

    def __init__(self, model_config, batch: int, prompt_length: int, new_tokens: int, *, seed: int = 0, mesh=None):
        model = init_model(model_config, seed=seed)
        self.num_params = count_params(model)
        buckets = Buckets(batch=(batch,), prompt=(prompt_length,), new_tokens=(new_tokens,))
        self.gen = Generator(model, mesh=mesh, batch_size=batch, buckets=buckets)
        del model
        self.batch, self.prompt_length, self.vocab = batch, prompt_length, model_config.vocab_size
        self.prompts = random_prompts(batch, prompt_length, model_config.vocab_size, seed)
        self.weight_bytes = sum(x.nbytes for path, x in jax.tree_util.tree_leaves_with_path(self.gen.params)
                                if "wpe" not in jax.tree_util.keystr(path))

    def __call__(self, new_tokens: int):
        return self.gen.generate_ids(self.prompts, max_new_tokens=new_tokens, eos_token_id=None)

    def mixed(self, count: int, new_tokens: int, seed: int = 1) -> None:
        """`count` calls of random batch sizes, prompt lengths and budgets inside the bucket."""
        rng = np.random.default_rng(seed)
        for _ in range(count):
            rows = int(rng.integers(1, self.batch + 1))
            prompts = [rng.integers(0, self.vocab, int(rng.integers(1, self.prompt_length + 1))).tolist()
                       for _ in range(rows)]
            self.gen.generate_ids(prompts, max_new_tokens=int(rng.integers(1, min(new_tokens, 4) + 1)))

    def environment(self) -> dict:
        return environment(self.gen.mesh)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)  # both return host values: the call is over when they do
    return time.perf_counter() - start


def time_decoding(runners: list, new_tokens: int, repeats: int) -> dict[str, dict]:
    """Per runner: the first call (compile), then `repeats` whole calls and first-token calls,
    the runners taking turns."""
    counter = CompileCounter.get()
    out = {r.framework: {"full": [], "first_token": []} for r in runners}
    for r in runners:
        log.info("%s: compiling and running the first call ...", r.framework)
        seconds, programs = counter.seconds, compilations()
        first = _timed(r, new_tokens)
        compiled = counter.seconds - seconds
        out[r.framework]["compile_time_s"] = compiled if compilations() > programs else first
        out[r.framework]["programs_after_first_call"] = compilations()
        log.info("%s: first call in %.1f s; warming up ...", r.framework, first)
        _timed(r, 1)  # warm: the first-token call (gptjax: the same program)
    log.info("timing %d calls of %d new tokens and %d first-token calls each ...", repeats, new_tokens, repeats)
    for _ in range(repeats):
        for r in runners:
            out[r.framework]["full"].append(_timed(r, new_tokens))
            out[r.framework]["first_token"].append(_timed(r, 1))
    return out


def make_record(runner, timing: dict, *, model_name: str, dtype: str, batch: int, prompt_length: int,
                new_tokens: int, bandwidth: float | None, recompiles: int | None) -> dict:
    full, first = statistics.median(timing["full"]), statistics.median(timing["first_token"])
    decode = max(full - first, 1e-9)
    record = {
        "framework": runner.framework, "benchmark": "generate", "config": "generate",
        "model": f"{model_name} (random weights)", "head": "causal_lm", "num_params": int(runner.num_params),
        "dtype": dtype, "batch_size": batch, "prompt_length": prompt_length, "max_new_tokens": new_tokens,
        "seq_len": prompt_length + new_tokens, "greedy": True,
        "tokens_per_sec": round(batch * new_tokens / full, 2),
        "decode_tokens_per_sec": round(batch * (new_tokens - 1) / decode, 2) if new_tokens > 1 else None,
        "prefill_tokens_per_sec": round(batch * prompt_length / first, 2),
        "time_to_first_token_ms": round(first * 1e3, 2),
        "decode_step_ms": round(decode / (new_tokens - 1) * 1e3, 3) if new_tokens > 1 else None,
        "step_time_ms": round(full * 1e3, 2),
        "call_time_ms_spread": spread(timing["full"]),
        "calls_timed": len(timing["full"]),
        "compile_time_s": round(timing["compile_time_s"], 3),
        "recompiles": recompiles,
        "compilations_after_warmup": recompiles,
    }
    record.update(runner.environment())
    if bandwidth and isinstance(runner, GptjaxDecoding) and batch == 1 and new_tokens > 1:
        per_token = decode / (new_tokens - 1)
        record.update(weight_bytes=int(runner.weight_bytes), copy_bandwidth_bytes_per_sec=round(bandwidth),
                      memory_bandwidth_fraction=round(runner.weight_bytes / per_token / bandwidth, 3))
    record["host_max_rss_bytes"] = peak_rss()
    return record


def run(model_config, *, model_name: str = "gpt2", batch_sizes=(1, 16), prompt_length: int = 128,
        max_new_tokens: int = 128, repeats: int = 3, others=(), mesh=None, mixed_requests: int = 5, seed: int = 0,
        bandwidth_bytes: int = 256 * 2**20) -> list[dict]:
    """Records of gptjax's decoding at each batch size, and of each of `others`: runner
    factories (a class, or a functools.partial of one) called as GptjaxDecoding is
    (model_config, batch, prompt_length, new_tokens, seed=...), each runner with a `framework`
    name, `num_params`, `environment()`, and a call that decodes `new_tokens` tokens a row
    (benchmarks/torch_decoding.py). See the module docstring."""
    log.info("measuring the memory copy bandwidth ...")
    bandwidth = copy_bandwidth(bandwidth_bytes)
    records = []
    for batch in batch_sizes:
        shapes = (model_config, batch, prompt_length, max_new_tokens)
        log.info("batch %d: building the runners (random weights) ...", batch)
        runners = [GptjaxDecoding(*shapes, seed=seed, mesh=mesh), *(other(*shapes, seed=seed) for other in others)]
        timing = time_decoding(runners, max_new_tokens, repeats)
        log.info("batch %d: %d calls of mixed shapes, to count recompilations ...", batch, mixed_requests)
        runners[0].mixed(mixed_requests, max_new_tokens)
        recompiles = compilations() - timing["gptjax"]["programs_after_first_call"]
        for runner in runners:
            records.append(make_record(
                runner, timing[runner.framework], model_name=model_name, dtype=model_config.dtype, batch=batch,
                prompt_length=prompt_length, new_tokens=max_new_tokens, bandwidth=bandwidth,
                recompiles=recompiles if runner.framework == "gptjax" else None))
            records[-1]["interleaved_with"] = [r.framework for r in runners if r is not runner]
        del runners
    return records


def run_generate(config, workdir, *, config_name: str = "", results: str | None = None, steps: int = 3,
                 warmup: int = 0) -> list[dict]:
    """run.py --mode=benchmark --benchmark=generate: times gptjax's decoding at generate.batch_size,
    generate.prompt_length and generate.max_new_tokens (random weights of the config's size);
    records as train_step.run's. Beside PyTorch: benchmarks/generate.py."""
    from gptjax import sharding

    g = config.generate
    check_generation(config, model_config_of(config).n_positions, g.prompt_length)
    records = run(
        model_config_of(config), model_name=config.model.name_or_path or "gpt2", batch_sizes=(g.batch_size,),
        prompt_length=g.prompt_length, max_new_tokens=g.max_new_tokens, repeats=max(steps, 1),
        mesh=sharding.make_mesh(config.mesh))
    for record in records:
        record["config"] = config_name
        finish(record, workdir, results)
    print(format_table(records))
    return records
