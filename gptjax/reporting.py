"""What a run writes as it goes: metrics.jsonl, TensorBoard events, and a progress display.

Train metrics stay on the device until a log step, so the loop never waits for the accelerator
in between; then they are fetched together and averaged over the interval.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger("gptjax")


class Reporter:
    def __init__(self, workdir: Path, total_steps: int, *, append: bool = False):
        from tensorboardX import SummaryWriter

        self.metrics_file = open(workdir / "metrics.jsonl", "a" if append else "w", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        self.total_steps = total_steps
        self.progress = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
        self._pending: list[tuple[int, dict]] = []
        self._tokens = 0
        self._since = time.perf_counter()

    def count_tokens(self, n: int) -> None:
        self._tokens += n

    def pending(self, step: int, metrics: dict) -> None:
        """Holds a step's device metrics without fetching them."""
        self._pending.append((step, metrics))

    def flush_train(self, epoch: int, schedule) -> None:
        """Fetches the held metrics and writes one train line for the interval."""
        if not self._pending:
            return
        steps, metrics = zip(*self._pending)
        fetched = jax.device_get(list(metrics))  # the one host sync of the interval
        elapsed = time.perf_counter() - self._since
        step = steps[-1]
        line = {
            "step": step,
            "split": "train",
            "epoch": epoch + 1,
            "loss": float(np.mean([m["loss"] for m in fetched])),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "learning_rate": float(schedule(step - 1)),
            "tokens_per_sec": self._tokens / elapsed if elapsed > 0 else 0.0,
        }
        self.write(line)
        if self.progress is not None:
            self.progress.update(len(steps))
            self.progress.set_postfix(loss=f"{line['loss']:.4f}", tok_s=f"{line['tokens_per_sec']:.0f}")
        else:
            log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tokens/s", step, self.total_steps,
                     line["loss"], line["learning_rate"], line["grad_norm"], line["tokens_per_sec"])
        self._pending, self._tokens, self._since = [], 0, time.perf_counter()

    def eval_line(self, step: int, split: str, epoch: int | None, metrics: dict) -> None:
        line = {"step": step, "split": split, **({"epoch": epoch + 1} if epoch is not None else {}), **metrics}
        self.write(line)
        headline = {k: v for k, v in metrics.items() if isinstance(v, float)}
        log.info("%s at step %d: %s", split, step, "  ".join(f"{k} {v:.4f}" for k, v in headline.items()))
        self._since = time.perf_counter()  # evaluation time is not training throughput

    def write(self, line: dict) -> None:
        self.metrics_file.write(json.dumps(line) + "\n")
        self.metrics_file.flush()
        for key, value in line.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tensorboard.add_scalar(f"{line['split']}/{key}", value, line["step"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.metrics_file.close()
        self.tensorboard.close()
