"""What a run writes as it goes: metrics.jsonl, TensorBoard events (and W&B: gptjax/trackers.py),
and a progress display.

Train metrics stay on the device until a log step (or a checkpoint), so the loop never waits
for the accelerator in between; then they are fetched together, checked for NaN / inf, and
averaged over the interval.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import sys
import time

import jax
import numpy as np
from etils import epath

from gptjax import trackers
from gptjax.errors import NonFiniteError

log = logging.getLogger("gptjax")

METRICS_FILE = trackers.METRICS_FILE


def read_metrics(path) -> list[dict]:
    """The lines of a metrics.jsonl as the run's final history: a resumed run's lines replace
    those the stopped run wrote after its checkpoint (and its test line); "run" lines and a line
    cut short by a kill are left out."""
    kept: list[dict] = []
    for text in epath.Path(path).read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if line.get("split") == "run":
            kept = [l for l in kept if l["step"] <= line["step"] and l["split"] != "test"]
        else:
            kept.append(line)
    return kept


def clock(seconds: float | None) -> str:
    """H:MM:SS, or "?" where nothing is known yet."""
    return "?" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


class Reporter:
    def __init__(self, workdir, total_steps: int, *, resume_step: int | None = None, pending=(), write=True,
                 config=None, primary_metric: str | None = None):
        """`write=False` (every process but the first) checks and logs, but writes no file. `config`
        (a ConfigDict) names the trackers (train.report_to; None: TensorBoard) and is logged to them;
        `primary_metric` heads TensorBoard's HParams table beside the train loss."""
        self.trackers = []
        if write:
            from gptjax.config import config_json

            tags = ["train/loss"] + [f"{split}/{primary_metric}" for split in ("validation", "test") if primary_metric]
            names = ("tensorboard",) if config is None else config.train.report_to
            self.trackers = trackers.open_all(workdir, names, tags)
            # Appended to, never rewritten: each run (or resumed run) starts with a line of split
            # "run"; lines after it replace earlier ones of the same or a later step.
            self.write({"step": resume_step or 0, "split": "run", "resumed": resume_step is not None,
                        "time": time.strftime("%Y-%m-%d %H:%M:%S")})
            if config is not None:
                for tracker in self.trackers:
                    tracker.config(config_json(config))
        self.total_steps = total_steps
        self.progress = None
        self._display = contextlib.ExitStack()
        if write and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.progress = tqdm(total=total_steps, initial=resume_step or 0, unit="step", dynamic_ncols=True)
            # Log lines written through tqdm print above the bar instead of being glued onto it.
            self._display.enter_context(logging_redirect_tqdm())
        self._pending: list[tuple[int, dict]] = [(step, metrics) for step, metrics in pending]
        self._tokens = 0
        self._start = self._since = time.perf_counter()
        # Seconds and steps of training proper (no compiling, no evaluation): what throughput and
        # the ETA are made of.
        self._train_seconds, self._train_steps, self._interval_steps = 0.0, 0, 0
        self._shapes: set[tuple] = set()
        self._evaluated = False

    def count_tokens(self, n: int) -> None:
        self._tokens += n

    def step(self, run, tokens: int, shape: tuple):
        """Runs one train step (`run()`) on a batch of `shape`. A shape not seen before compiles
        the step (the first batch, and each new bucket length): that step is announced, waited
        for and timed, and left out of tokens/s and the ETA, which it would otherwise dominate."""
        if shape in self._shapes:
            self._tokens += tokens
            self._interval_steps += 1
            return run()
        if self._pending:  # the steps before it, so that their time stays theirs
            jax.block_until_ready(self._pending[-1][1])
        what = "the train step" if not self._shapes else f"the train step for batches of {' x '.join(map(str, shape))}"
        log.info("compiling %s ...", what)
        start = time.perf_counter()
        metrics = jax.block_until_ready(run())
        seconds = time.perf_counter() - start
        log.info("compiled %s and ran its first step in %.1f s", what, seconds)
        self._shapes.add(shape)
        self._since += seconds
        return metrics

    @contextlib.contextmanager
    def evaluating(self, split: str):
        """Around an evaluation: its time is left out of the train interval's tokens/s; the first
        one compiles the evaluation step, which is said."""
        if not self._evaluated:
            log.info("evaluating on %s (compiling the evaluation step first) ...", split)
        start = time.perf_counter()
        with self.untimed():
            yield
        if not self._evaluated:
            log.info("compiled the evaluation step and evaluated %s in %.1f s", split, time.perf_counter() - start)
        self._evaluated = True

    @contextlib.contextmanager
    def untimed(self):
        """Around what is not training (saving a checkpoint, say): left out of tokens/s and the ETA."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._since += time.perf_counter() - start

    def pending(self, step: int, metrics: dict) -> None:
        """Holds a step's device metrics without fetching them."""
        self._pending.append((step, metrics))

    def settle(self) -> list[tuple[int, dict]]:
        """Fetches the held metrics (the one host sync of an interval) and checks them; returns
        them as plain floats, which is how a checkpoint stores the interval so far."""
        fetched = jax.device_get([m for _, m in self._pending])
        self._pending = [(step, {k: float(v) for k, v in m.items()}) for (step, _), m in zip(self._pending, fetched)]
        for step, m in self._pending:
            bad = [k for k, v in m.items() if not math.isfinite(v)]
            if bad:
                raise NonFiniteError(
                    f"step {step}: {' and '.join(bad)} not finite ({', '.join(f'{k}={m[k]}' for k in bad)}); "
                    "stopped without saving this state: the checkpoints hold only finite ones"
                )
        return list(self._pending)

    def flush_train(self, epoch: int, schedule) -> None:
        """Writes one train line for the interval since the last one."""
        if not self._pending:
            return
        held = self.settle()
        seconds = time.perf_counter() - self._since
        step = held[-1][0]
        self._train_seconds += seconds
        self._train_steps += self._interval_steps
        # None: the interval held only the compiling step, whose speed says nothing.
        tokens_per_sec = self._tokens / seconds if self._interval_steps and seconds > 0 else None
        line = {
            "step": step,
            "split": "train",
            "epoch": epoch + 1,
            "loss": float(np.mean([m["loss"] for _, m in held])),
            "grad_norm": float(np.mean([m["grad_norm"] for _, m in held])),
            "learning_rate": float(schedule(step - 1)),
            "tokens_per_sec": tokens_per_sec,
        }
        self.write(line)
        speed = "compiling" if tokens_per_sec is None else f"{tokens_per_sec:.0f}"
        if self.progress is not None:
            self.progress.update(len(held))
            self.progress.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{line['learning_rate']:.2e}",
                                      grad_norm=f"{line['grad_norm']:.3f}", tok_s=speed)
        else:
            log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %s tokens/s  elapsed %s  ETA %s", step,
                     self.total_steps, line["loss"], line["learning_rate"], line["grad_norm"], speed,
                     clock(time.perf_counter() - self._start), clock(self.eta(step)))
        self._pending, self._tokens, self._since, self._interval_steps = [], 0, time.perf_counter(), 0

    def eta(self, step: int) -> float | None:
        """Seconds until the last step at the speed of the steps timed so far (evaluations not
        counted); None before any was timed."""
        if not self._train_steps:
            return None
        return (self.total_steps - step) * self._train_seconds / self._train_steps

    def eval_line(self, step: int, split: str, epoch: int | None, metrics: dict) -> None:
        line = {"step": step, "split": split, **({"epoch": epoch + 1} if epoch is not None else {}), **metrics}
        self.write(line)
        headline = {k: v for k, v in metrics.items() if isinstance(v, float)}
        log.info("%s at step %d: %s", split, step, "  ".join(f"{k} {v:.4f}" for k, v in headline.items()))

    def write(self, line: dict) -> None:
        values = {k: v for k, v in line.items() if k not in ("step", "split")}
        for tracker in self.trackers:
            tracker.scalars(line["step"], line["split"], values)

    def close(self) -> None:
        self._display.close()
        if self.progress is not None:
            self.progress.close()
        for tracker in self.trackers:
            tracker.close()
