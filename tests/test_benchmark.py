"""The benchmark: its FLOP formula by hand, its peak table, the record run.py writes, and compare."""

import itertools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import run
from gptjax import benchmark
from gptjax.model import GPT2Config


def test_train_flops_of_gpt2_by_hand():
    # gpt2: D = 768, F = 3072, L = 12; batch 8 x 128 = 1024 tokens; a 9-label token head.
    # Matmul multiply-adds per block and token:
    #   c_attn 768*2304 = 1,769,472   attn.c_proj 768*768 = 589,824
    #   c_fc   768*3072 = 2,359,296   mlp.c_proj 3072*768 = 2,359,296      sum 7,077,888
    # FLOPs: 2 * 7,077,888 * 12 layers * 1024 tokens                  = 173,946,175,488
    # causal attention: 2 * T^2 * D = 2 * 16,384 * 768 = 25,165,824 per block and row,
    #   * 12 layers * 8 rows                                          =   2,415,919,104
    # classifier: 2 * 768 * 9 per token * 1024 tokens                 =      14,155,776
    # forward                                                         = 176,376,250,368
    # train step: 3 * forward                                         = 529,128,751,104
    gpt2 = GPT2Config.named("gpt2")
    assert benchmark.forward_flops(gpt2, "token_classification", 9, 8, 128) == 176_376_250_368
    assert benchmark.train_flops(gpt2, "token_classification", 9, 8, 128) == 529_128_751_104
    # A sequence head runs on one token a row: 2 * 768 * 2 * 8 rows = 24,576.
    assert benchmark.forward_flops(gpt2, "sequence_classification", 2, 8, 128) == (
        173_946_175_488 + 2_415_919_104 + 24_576)
    # Only the language-model head pays for the vocabulary: 2 * 768 * 50,257 * 1024 tokens.
    assert benchmark.forward_flops(gpt2, "causal_lm", None, 8, 128) == (
        173_946_175_488 + 2_415_919_104 + 2 * 768 * 50_257 * 1024)


def test_datasheet_peaks_match_device_kinds():
    peak = lambda kind: benchmark.datasheet_peak(kind)[0]  # noqa: E731
    assert peak("NVIDIA H200") == 989.5e12
    assert peak("NVIDIA H100 80GB HBM3") == 989.5e12
    assert peak("NVIDIA H100 PCIe") == 756.5e12
    assert peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak("TPU v4") == 275e12
    assert peak("TPU v5 lite") == 197e12  # v5e, not v5p's "TPU v5"
    assert peak("TPU v5") == 459e12
    assert peak("TPU v5p") == 459e12
    assert peak("TPU v6 lite") == 918e12
    assert benchmark.datasheet_peak("cpu") is None


def test_summarize_arithmetic():
    # One stalled pipelined step (2 s) moves the mean, not the median: throughput is the median's.
    timing = {"compile_time_s": 1.5, "times": [0.3, 0.1, 0.2, 0.4], "pipelined": [0.25, 0.25, 2.0, 0.25],
              "pipelined_s": 2.75, "steps": 4, "compilations_after_warmup": 0}
    s = benchmark.summarize(timing, batch=8, length=128, flops=4e12, peak=2e12, num_devices=2)
    assert s["step_time_ms"] == 250.0  # median of 100, 200, 300, 400 ms
    assert s["step_time_ms_spread"]["min"] == 100.0 and s["step_time_ms_spread"]["max"] == 400.0
    assert s["tokens_per_sec"] == 8 * 128 * 4  # 4 steps of 1024 tokens in 1 s
    assert s["median_step_tokens_per_sec"] == 8 * 128 / 0.25
    assert s["samples_per_sec"] == 32
    assert s["model_tflops_per_sec"] == 16.0  # 4e12 FLOPs a step, 4 steps a second
    assert s["mfu"] == 4.0  # 16e12 / (2e12 * 2 devices)


def test_summarize_pairs_each_step_with_the_peak_measured_after_it():
    # The machine runs at half speed for the middle two rounds: the steps and the matmuls beside
    # them alike. Each step ran at half the matmul's FLOP/s, so MFU is 0.5 throughout; against
    # one peak for the whole run it would move with the drift (0.5 / 0.75 against the median).
    slow = [1, 2, 2, 1]
    timing = {"compile_time_s": 1.0, "times": [0.5 * k for k in slow], "pipelined": [0.5] * 4, "pipelined_s": 2.0,
              "steps": 4, "compilations_after_warmup": 0, "peaks": [1e12 / k for k in slow]}
    s = benchmark.summarize(timing, batch=8, length=128, flops=0.25e12, peak=None, num_devices=1)
    assert s["mfu"] == 0.5
    assert s["peak_flops_per_device"] == 0.75e12  # the median of 1, 0.5, 0.5, 1 TFLOP/s
    assert s["peak_flops_spread"] == [0.5e12, 1e12]
    assert s["model_tflops_per_sec"] == 0.5  # throughput stays the pipelined steps'
    with pytest.raises(ValueError):  # a peak for every synced step, or nothing is paired
        benchmark.summarize(dict(timing, peaks=timing["peaks"][:3]), batch=8, length=128, flops=1.0, peak=None,
                            num_devices=1)


def test_time_steps_measures_the_peak_after_each_round():
    calls = []
    step = jax.jit(lambda x: x + 1)
    runners = {name: (step, itertools.repeat(jnp.ones(4)), jax.block_until_ready) for name in ("a", "b")}
    probe = lambda: calls.append(len(calls)) or float(len(calls))  # noqa: E731
    timing = benchmark.time_steps(runners, warmup=1, steps=3, probe=probe)
    assert calls == [0, 1, 2]  # once a round of synced steps, not in warm-up or the pipelined phase
    assert timing["a"]["peaks"] == timing["b"]["peaks"] == [1.0, 2.0, 3.0]
    assert "peaks" not in benchmark.time_steps(runners, warmup=0, steps=1)["a"]


def test_peak_probe_measures_a_matmul():
    probe = benchmark.peak_probe(n=64, repeats=2)
    assert 0 < probe() < 1e15
    assert benchmark.peak_flops("cpu", "cpu", "float32")[2] is not None
    assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "gpu", "bfloat16")[2] is None


def test_time_steps_counts_recompilation():
    f = jax.jit(lambda x: x * 2)
    shapes = iter([(4,), (4,), (4,), (5,), (4,), (4,), (4,), (4,)])  # a new shape after warm-up
    batches = (np.ones(next(shapes), np.float32) for _ in range(8))
    timing = benchmark.time_steps({"f": (f, batches, jax.block_until_ready)}, warmup=1, steps=3)["f"]
    assert timing["compilations_after_warmup"] == 1
    assert len(timing["times"]) == 3 and len(timing["pipelined"]) == 3
    assert timing["pipelined_s"] == pytest.approx(sum(timing["pipelined"]))


def test_pipelined_steps_sync_one_step_behind_a_donated_state():
    # As a training loop: step k+1 is dispatched before step k is waited for, and the state each
    # step donates is never what gets synced (a donated buffer cannot be waited on).
    step = jax.jit(lambda state, x: (state + x, jnp.sum(state)), donate_argnums=0)
    state = [jnp.zeros((64,), jnp.float32)]
    synced = []

    def run_step(x):
        state[0], metric = step(state[0], x)
        return metric

    def sync(metric):
        synced.append(float(jax.block_until_ready(metric)))

    batches = (np.full((64,), 1.0, np.float32) for _ in range(20))
    timing = benchmark.time_steps({"s": (run_step, batches, sync)}, warmup=1, steps=4)["s"]
    assert len(timing["pipelined"]) == 4 and all(t > 0 for t in timing["pipelined"])
    last = synced[-4:]  # each pipelined step's own metric, in order: the state grows by 64 a step
    assert np.diff(last).tolist() == [64.0] * 3 and last[0] > 0


def test_warm_up_runs_until_memory_stops_growing():
    calls = []
    batches = iter(range(100))
    peaks = iter([10, 20, 20, 30, 40, 40, 40, 40])  # before and after each round

    def step(batch):
        calls.append(batch)

    benchmark.warm_up(step, batches, lambda _: None, 2, memory=lambda: next(peaks))
    # 2 steps (grew 10 -> 20), 2 more (20 -> 30: grew), 2 more (40 -> 40: settled).
    assert calls == [0, 1, 2, 3, 4, 5]
    benchmark.warm_up(step, batches, lambda _: None, 0, memory=lambda: 0)
    assert len(calls) == 6
    benchmark.warm_up(step, batches, lambda _: None, 1, most=3, memory=iter(range(100)).__next__)
    assert len(calls) == 9  # always growing: stops at `most`


TINY = ["--config.model.arch.n_layer=1", "--config.model.arch.n_embd=32", "--config.model.arch.n_head=2",
        "--config.model.arch.n_positions=16", "--config.tokenizer.vocab_size=300", "--config.data.max_length=16",
        "--config.train.batch_size=8", "--config.train.eval_batch_size=8"]


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    results = workdir / "results" / "cpu.jsonl"
    argv = ["--config=demo", f"--workdir={workdir}", "--mode=benchmark", f"--results={results}",
            "--benchmark_steps=3", "--benchmark_warmup=1", *TINY]
    run.main(argv)
    return workdir, results


def test_benchmark_mode_writes_the_record(tiny_record):
    workdir, results = tiny_record
    record = json.loads((workdir / "benchmark.json").read_text())
    assert set(benchmark.RECORD_FIELDS) <= set(record)
    for key in ("tokens_per_sec", "step_time_ms", "compile_time_s", "mfu", "samples_per_sec"):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert isinstance(record["peak_memory_bytes"], int) and record["peak_memory_bytes"] > 0
    assert record["device_kind"] == jax.devices()[0].device_kind
    assert record["num_devices"] == jax.device_count()
    assert record["framework"] == "gptjax" and record["config"] == "demo"
    assert (record["batch_size"], record["seq_len"], record["num_labels"]) == (8, 16, 9)
    assert record["compilations_after_warmup"] == 0
    assert record["steps_timed"] == 3
    # A CPU's peak: the matmul timed in turn with the steps.
    low, high = record["peak_flops_spread"]
    assert 0 < low <= record["peak_flops_per_device"] <= high and record["peak_source"].startswith("measured")
    assert record["eval"]["compilations_after_warmup"] == 0 and record["eval"]["tokens_per_sec"] > 0
    assert record["versions"]["jax"] == jax.__version__
    # The FLOPs are those of the shrunk model: 1 layer, D = 32, vocab 300, 9 labels.
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=300)
    assert record["flops_per_step"] == benchmark.train_flops(config, "token_classification", 9, 8, 16)
    lines = results.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record


@pytest.mark.parametrize("flag", ["--benchmark_steps=0", "--benchmark_warmup=-1"])
def test_benchmark_counts_are_checked_before_anything_runs(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--config=demo", f"--workdir={tmp_path / 'w'}", "--mode=benchmark", flag])
    assert "at least 1 timed step" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_compare_prints_a_table_and_draws_a_chart(tiny_record, tmp_path, capsys):
    workdir, results = tiny_record
    record = json.loads((workdir / "benchmark.json").read_text())
    other = dict(record, framework="pytorch-eager", tokens_per_sec=12.5, mfu=None, device_kind="NVIDIA H200")
    (tmp_path / "other.jsonl").write_text(json.dumps(other) + "\n")
    chart = tmp_path / "chart.png"
    benchmark.main(["compare", str(workdir / "benchmark.json"), str(tmp_path / "other.jsonl"), "--out", str(chart)])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "demo" in line]
    assert len(rows) == 2
    assert "gptjax" in rows[0] and f"{record['tokens_per_sec']:.0f}" in rows[0]
    assert "pytorch-eager" in rows[1] and "NVIDIA H200" in rows[1] and " 12 " in rows[1]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_without_matplotlib_names_the_extra(tiny_record, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    workdir, _ = tiny_record
    with pytest.raises(SystemExit, match=r"error: the chart needs matplotlib: pip install 'gptjax\[plot\]'"):
        benchmark.main(["compare", str(workdir / "benchmark.json"), "--out", str(tmp_path / "chart.png")])
    assert "gptjax" in capsys.readouterr().out  # the table still printed
    assert not (tmp_path / "chart.png").exists()


def test_load_records_reads_json_and_jsonl(tmp_path):
    one = {"framework": "a", "tokens_per_sec": 1.0}
    (tmp_path / "benchmark.json").write_text(json.dumps(one, indent=2))
    (tmp_path / "r.jsonl").write_text(json.dumps(one) + "\n" + json.dumps(dict(one, framework="b")) + "\n")
    records = benchmark.load_records([tmp_path / "benchmark.json", tmp_path / "r.jsonl"])
    assert [r["framework"] for r in records] == ["a", "a", "b"]
    np.testing.assert_equal(records[0], one)
