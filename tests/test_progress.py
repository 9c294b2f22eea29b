"""Progress a person can read (compiling lines, elapsed time, ETA, throughput without compiling,
a terminal's bar) and validation every N steps (train.eval_every_steps)."""

import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import pytest

from conftest import tiny_config
from gptjax import tasks, train
from gptjax.checkpoint import Preempted, PreemptionGuard
from gptjax.reporting import Reporter, clock, read_metrics
from test_checkpoint import metrics_without_timing

COMPILE_SECONDS = 3.0


def slow_first_step(monkeypatch):
    """The first train step takes COMPILE_SECONDS longer, as a long compilation would."""
    build = train.build_steps

    def build_slow(*args, **kwargs):
        steps = build(*args, **kwargs)
        run, calls = steps.train, []

        def train_step(batch):
            if not calls:
                time.sleep(COMPILE_SECONDS)
            calls.append(1)
            return run(batch)

        steps.train = train_step
        return steps

    monkeypatch.setattr(train, "build_steps", build_slow)


def test_log_says_compiling_elapsed_eta_and_throughput_without_compiling(small_ner, tmp_path, monkeypatch, caplog):
    slow_first_step(monkeypatch)
    config = tiny_config("token", small_ner, **{"train.num_epochs": 1, "train.log_every": 5})
    with caplog.at_level(logging.INFO, logger="gptjax"):
        train.train_and_evaluate(config, tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    text = "\n".join(messages)
    first_step = next(i for i, m in enumerate(messages) if m.startswith("step "))
    assert any(m == "compiling the train step ..." for m in messages[:first_step]), text
    assert any(m.startswith("compiled the train step and ran its first step in ") for m in messages[:first_step])
    assert "(compiling the evaluation step first)" in text and "compiled the evaluation step and evaluated" in text
    step_lines = [m for m in messages if m.startswith("step ")]
    assert step_lines and all(" elapsed " in m and " ETA " in m for m in step_lines), step_lines
    assert " ETA 0:00:00" in step_lines[-1]  # at the last step
    # The first interval (steps 1-5) holds the slow first step: its throughput leaves that step out.
    lines = [l for l in read_metrics(tmp_path / "metrics.jsonl") if l["split"] == "train"]
    assert lines[0]["step"] == 5
    most_tokens = 5 * config.train.batch_size * config.data.max_length
    assert lines[0]["tokens_per_sec"] > most_tokens / COMPILE_SECONDS


def test_an_interval_of_only_the_compiling_step_reports_no_speed(small_ner, tmp_path, caplog):
    # One bucket: one shape, one compilation.
    config = tiny_config("token", small_ner, **{"train.max_steps": 3, "train.log_every": 1, "data.buckets": "64"})
    with caplog.at_level(logging.INFO, logger="gptjax"):
        train.train_and_evaluate(config, tmp_path)
    lines = [l for l in read_metrics(tmp_path / "metrics.jsonl") if l["split"] == "train"]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert lines[0]["tokens_per_sec"] is None and all(l["tokens_per_sec"] > 0 for l in lines[1:])
    first = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("step 1/3"))
    assert "compiling tokens/s" in first and "ETA ?" in first


def test_clock():
    assert clock(None) == "?" and clock(0.4) == "0:00:00" and clock(3725.2) == "1:02:05"


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_bar_shows_lr_and_grad_norm_and_log_lines_print_above_it(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)
    logging.root.addHandler(handler)
    try:
        reporter = Reporter(tmp_path, 10)
        assert handler not in logging.root.handlers  # replaced by one that writes through tqdm
        reporter.pending(1, {"loss": jnp.float32(2.5), "grad_norm": jnp.float32(0.75)})
        reporter.flush_train(0, lambda step: 1e-3)
        postfix = reporter.progress.postfix
        assert "lr=1.00e-03" in postfix and "grad_norm=0.750" in postfix and "loss=2.5000" in postfix
        logging.getLogger("gptjax").warning("a line of its own")
        reporter.close()
        assert handler in logging.root.handlers
    finally:
        logging.root.removeHandler(handler)
    # tqdm.write clears the bar before the line: the line starts after a carriage return or newline.
    out = terminal.getvalue()
    assert out.count("a line of its own") == 1  # once, not also through a handler on the gptjax logger
    before = out[:out.index("a line of its own")]
    assert before.endswith(("\r", "\n", "\x1b[A")) or before.rstrip(" ").endswith(("\r", "\n")), repr(out)


def validation_steps_and_best(workdir, task_name):
    task = tasks.get(task_name)
    val = [l for l in read_metrics(Path(workdir) / "metrics.jsonl") if l["split"] == "validation"]
    best = None
    for line in val:
        if task.improves(line[task.primary_metric], best and best[task.primary_metric]):
            best = line
    return [l["step"] for l in val], best


def test_eval_every_steps_evaluates_there_and_keeps_the_best_of_them(small_ner, tmp_path):
    config = tiny_config("token", small_ner, **{"train.num_epochs": 2, "train.eval_every_steps": 5})
    results = train.train_and_evaluate(config, tmp_path)
    steps, best = validation_steps_and_best(tmp_path, "token")
    # 13 steps an epoch (buckets): every 5 steps, and at each epoch's end.
    assert steps == [5, 10, 13, 15, 20, 25, 26]
    assert results["best_step"] == best["step"] and os.listdir(tmp_path / "best") == [str(best["step"])]
    assert results["validation"]["f1"] == best["f1"]
    assert results["best_epoch"] == best["epoch"]


def test_eval_every_steps_default_evaluates_at_epoch_ends_only(small_ner, tmp_path):
    train.train_and_evaluate(tiny_config("token", small_ner, **{"train.num_epochs": 2}), tmp_path)
    assert validation_steps_and_best(tmp_path, "token")[0] == [13, 26]


def test_resume_at_an_evaluation_step_is_exact(small_ner, tmp_path, monkeypatch):
    overrides = {"train.num_epochs": 2, "train.eval_every_steps": 5, "model.dropout": 0.1}
    reference = tmp_path / "reference"
    train.train_and_evaluate(tiny_config("token", small_ner, **overrides), reference)

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(PreemptionGuard, "requested", lambda self, step: step == 15)
    with pytest.raises(Preempted):
        train.train_and_evaluate(tiny_config("token", small_ner, **overrides), stopped)
    assert validation_steps_and_best(stopped, "token")[0] == [5, 10, 13, 15]
    monkeypatch.undo()
    results = train.train_and_evaluate(tiny_config("token", small_ner, **overrides), stopped)
    assert metrics_without_timing(stopped) == metrics_without_timing(reference)
    assert results == json.loads((reference / "results.json").read_text())
    assert os.listdir(stopped / "best") == os.listdir(reference / "best")


def test_benchmark_mode_logs_its_phases_as_it_goes(tmp_path, caplog):
    import run
    from test_bench_train_step import TINY as BENCH_TINY

    with caplog.at_level(logging.INFO, logger="gptjax"):
        run.main(["--config=demo", f"--workdir={tmp_path}", "--mode=benchmark", "--benchmark_steps=2",
                  "--benchmark_warmup=1", *BENCH_TINY])
    messages = [r.getMessage() for r in caplog.records]
    phases = ["building the model", "compiling the train step", "compiled the train step in", "timing 2 steps of train",
              "timing 2 pipelined train steps", "compiling the eval step", "measuring the train step's memory"]
    at = [next((i for i, m in enumerate(messages) if m.startswith(p)), None) for p in phases]
    assert None not in at and at[:5] == sorted(at[:5]), messages


def test_decoding_benchmark_logs_its_phases(caplog):
    from gptjax.bench import decoding
    from test_generate import TINY as MODEL

    with caplog.at_level(logging.INFO, logger="gptjax"):
        decoding.run(MODEL, model_name="tiny", batch_sizes=(1,), prompt_length=8, max_new_tokens=4, repeats=1,
                     mixed_requests=1, bandwidth_bytes=2**20)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for phase in ("building the runners", "gptjax: compiling and running the first call", "timing 1 calls",
                  "mixed shapes"):
        assert phase in text, text


def test_compiling_evaluating_and_saving_are_left_out_of_throughput_and_eta(tmp_path):
    reporter = Reporter(tmp_path, 10, write=False)
    metrics = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

    def slow():
        time.sleep(1.0)  # a compilation
        return metrics

    reporter.pending(1, reporter.step(slow, 1000, (4, 8)))
    for step in (2, 3):
        reporter.pending(step, reporter.step(lambda: metrics, 1000, (4, 8)))
    with reporter.evaluating("validation"):
        time.sleep(0.5)
    with reporter.untimed():
        time.sleep(0.5)  # a checkpoint
    reporter.flush_train(0, lambda step: 1e-3)
    assert reporter.eta(3) is not None and reporter.eta(3) < 0.5
    reporter.close()
    # Only steps 2 and 3 were timed: 2000 tokens in far less than the 2 s slept.
    assert reporter._train_steps == 2 and reporter._train_seconds < 0.5
