"""Timing steps as a training loop runs them: compile counts, warm-up, synced and pipelined steps,
their medians and spread, and the process's peak resident memory."""

from __future__ import annotations

import collections
import itertools
import logging
import resource
import statistics
import time

import jax
import numpy as np

log = logging.getLogger("gptjax")

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
    queue = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def peak_rss() -> int:
    """The process's peak resident memory, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def warm_up(run_step, batches, sync, steps: int, most: int = 24, memory=peak_rss):
    """`steps` steps dispatched back to back (two in flight, as in the pipelined phase), then more, in pairs,
    while the process's peak memory still grows (at most `most` in all). Two steps in flight hold
    their temporaries at once, and on a CPU the heap takes a dozen steps to settle at that
    footprint: the page faults of that growth slow the first timed steps. `memory`:
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
    earlier, so not a donated state. `probe` (flops.peak_probe), if given, runs after each round of
    synced steps; its results are each runner's `peaks`, one a synced step."""
    counter = CompileCounter.get()
    out = {name: {"steps": steps, "times": []} for name in runners}
    for name, (run_step, batches, sync) in runners.items():
        log.info("compiling the %s step ...", name)
        compiles, seconds, start = counter.compiles, counter.seconds, time.perf_counter()
        sync(run_step(next(batches)))
        first = time.perf_counter() - start
        out[name]["compile_time_s"] = counter.seconds - seconds if counter.compiles > compiles else first
        log.info("compiled the %s step in %.1f s; warming up (%d steps or more) ...", name, first, warmup)
        warm_up(run_step, batches, sync, warmup)
    after_warmup = counter.compiles
    peaks = []
    log.info("timing %d steps of %s, each waited for ...", steps, " and ".join(runners))
    for _ in range(steps):
        for name, (run_step, batches, sync) in runners.items():
            start = time.perf_counter()
            sync(run_step(next(batches)))
            out[name]["times"].append(time.perf_counter() - start)
        if probe is not None:
            peaks.append(probe())
    for name, (run_step, batches, sync) in runners.items():
        log.info("timing %d pipelined %s steps ...", steps, name)
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
    steps' median: one stalled step (a busy host, the kernel compacting memory) moves their
    mean. Where time_steps measured the peak (`peaks`, a CPU's), MFU
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
