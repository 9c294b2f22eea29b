"""Timing: the summary's arithmetic, synced and pipelined steps, compile counts, warm-up."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.bench.timing import summarize, time_steps, warm_up


def test_summarize_arithmetic():
    # One stalled pipelined step (2 s) moves the mean, not the median: throughput is the median's.
    timing = {"compile_time_s": 1.5, "times": [0.3, 0.1, 0.2, 0.4], "pipelined": [0.25, 0.25, 2.0, 0.25],
              "pipelined_s": 2.75, "steps": 4, "compilations_after_warmup": 0}
    s = summarize(timing, batch=8, length=128, flops=4e12, peak=2e12, num_devices=2)
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
    s = summarize(timing, batch=8, length=128, flops=0.25e12, peak=None, num_devices=1)
    assert s["mfu"] == 0.5
    assert s["peak_flops_per_device"] == 0.75e12  # the median of 1, 0.5, 0.5, 1 TFLOP/s
    assert s["peak_flops_spread"] == [0.5e12, 1e12]
    assert s["model_tflops_per_sec"] == 0.5  # throughput stays the pipelined steps'
    with pytest.raises(ValueError):  # a peak for every synced step, or nothing is paired
        summarize(dict(timing, peaks=timing["peaks"][:3]), batch=8, length=128, flops=1.0, peak=None,
                            num_devices=1)


def test_time_steps_measures_the_peak_after_each_round():
    calls = []
    step = jax.jit(lambda x: x + 1)
    runners = {name: (step, itertools.repeat(jnp.ones(4)), jax.block_until_ready) for name in ("a", "b")}
    probe = lambda: calls.append(len(calls)) or float(len(calls))  # noqa: E731
    timing = time_steps(runners, warmup=1, steps=3, probe=probe)
    assert calls == [0, 1, 2]  # once a round of synced steps, not in warm-up or the pipelined phase
    assert timing["a"]["peaks"] == timing["b"]["peaks"] == [1.0, 2.0, 3.0]
    assert "peaks" not in time_steps(runners, warmup=0, steps=1)["a"]


def test_time_steps_counts_recompilation():
    f = jax.jit(lambda x: x * 2)
    shapes = iter([(4,), (4,), (4,), (5,), (4,), (4,), (4,), (4,)])  # a new shape after warm-up
    batches = (np.ones(next(shapes), np.float32) for _ in range(8))
    timing = time_steps({"f": (f, batches, jax.block_until_ready)}, warmup=1, steps=3)["f"]
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
    timing = time_steps({"s": (run_step, batches, sync)}, warmup=1, steps=4)["s"]
    assert len(timing["pipelined"]) == 4 and all(t > 0 for t in timing["pipelined"])
    last = synced[-4:]  # each pipelined step's own metric, in order: the state grows by 64 a step
    assert np.diff(last).tolist() == [64.0] * 3 and last[0] > 0


def test_warm_up_runs_until_memory_stops_growing():
    calls = []
    batches = iter(range(100))
    peaks = iter([10, 20, 20, 30, 40, 40, 40, 40])  # before and after each round

    def step(batch):
        calls.append(batch)

    warm_up(step, batches, lambda _: None, 2, memory=lambda: next(peaks))
    # 2 steps (grew 10 -> 20), 2 more (20 -> 30: grew), 2 more (40 -> 40: settled).
    assert calls == [0, 1, 2, 3, 4, 5]
    warm_up(step, batches, lambda _: None, 0, memory=lambda: 0)
    assert len(calls) == 6
    warm_up(step, batches, lambda _: None, 1, most=3, memory=iter(range(100)).__next__)
    assert len(calls) == 9  # always growing: stops at `most`
