"""What a run writes as it goes: metrics.jsonl, TensorBoard events, and a progress display.

Train metrics stay on the device until a log step (or a checkpoint), so the loop never waits
for the accelerator in between; then they are fetched together, checked for NaN / inf, and
averaged over the interval.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger("gptjax")

METRICS_FILE = "metrics.jsonl"


class NonFiniteError(RuntimeError):
    """The loss or the gradients stopped being finite; nothing from that step on is saved."""


def truncate_metrics(workdir: Path, step: int) -> None:
    """Drops the lines a resumed run will write again: those after `step`, and the final test."""
    path = workdir / METRICS_FILE
    if not path.exists():
        return
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record["step"] <= step and record["split"] != "test":
            kept.append(line)
    path.write_text("".join(l + "\n" for l in kept), encoding="utf-8")


class Reporter:
    def __init__(self, workdir: Path, total_steps: int, *, resume_step: int | None = None, pending=(), write=True):
        """`write=False` (every process but the first) checks and logs, but writes no file."""
        from tensorboardX import SummaryWriter

        self.metrics_file = self.tensorboard = None
        if write:
            if resume_step is None:
                (workdir / METRICS_FILE).unlink(missing_ok=True)
            else:
                truncate_metrics(workdir, resume_step)
            self.metrics_file = open(workdir / METRICS_FILE, "a", encoding="utf-8")
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        self.total_steps = total_steps
        self.progress = None
        if write and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, initial=resume_step or 0, unit="step", dynamic_ncols=True)
        self._pending: list[tuple[int, dict]] = [(step, metrics) for step, metrics in pending]
        self._tokens = 0
        self._since = time.perf_counter()

    def count_tokens(self, n: int) -> None:
        self._tokens += n

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
        elapsed = time.perf_counter() - self._since
        step = held[-1][0]
        line = {
            "step": step,
            "split": "train",
            "epoch": epoch + 1,
            "loss": float(np.mean([m["loss"] for _, m in held])),
            "grad_norm": float(np.mean([m["grad_norm"] for _, m in held])),
            "learning_rate": float(schedule(step - 1)),
            "tokens_per_sec": self._tokens / elapsed if elapsed > 0 else 0.0,
        }
        self.write(line)
        if self.progress is not None:
            self.progress.update(len(held))
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
        if self.metrics_file is None:
            return
        self.metrics_file.write(json.dumps(line) + "\n")
        self.metrics_file.flush()
        for key, value in line.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tensorboard.add_scalar(f"{line['split']}/{key}", value, line["step"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.tensorboard.close()
