"""Resuming exactly: SIGKILL at several points, SIGTERM, damaged checkpoints, NaN, other topologies."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from gptjax import train
from gptjax.reporting import read_metrics
from gptjax.checkpoint import PREEMPTED_EXIT_CODE
from gptjax.config import check_compatible, config_json
from gptjax.errors import ConfigError
from gptjax.errors import NonFiniteError

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--config=demo", "--config.model.arch.n_layer=1", "--config.model.arch.n_embd=32", "--config.model.arch.n_head=2",
    "--config.tokenizer.vocab_size=300", "--config.data.synthetic_sizes=(400, 40, 40)", "--config.train.batch_size=16",
    "--config.train.eval_batch_size=16", "--config.train.num_epochs=2", "--config.train.log_every=4",
    "--config.checkpoint.every_steps=6", "--config.model.dropout=0.1",
]  # 26 steps an epoch (buckets pad some batches): checkpoints at 6, 12, 18, 24, 26 (epoch end), 30, ...


def start(workdir, *extra, devices=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "run.py", *TINY, f"--workdir={workdir}", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, expect=0):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out
    return out


def run(workdir, *extra, expect=0, devices=1):
    return finish(start(workdir, *extra, devices=devices), expect)


def kill_when(proc, condition, sig=signal.SIGKILL, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("the run ended before the kill point: " + proc.stdout.read())
        if condition():
            proc.send_signal(sig)
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail("kill point never reached")


def metric_steps(workdir, split):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["split"] == split:
            steps.append(record["step"])
    return steps


def metrics_without_timing(workdir):
    lines = read_metrics(Path(workdir) / "metrics.jsonl")
    return [{k: v for k, v in l.items() if k != "tokens_per_sec"} for l in lines]


def saved_arrays(directory):
    """A saved state's arrays by path, read onto this process's one device whatever mesh wrote them."""
    checkpointer = ocp.StandardCheckpointer()
    directory = Path(directory).resolve()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(directory).item_metadata)
    tree = checkpointer.restore(directory, target)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def final_state(workdir):
    checkpoints = Path(workdir) / "checkpoints"
    last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    return last, saved_arrays(checkpoints / str(last) / "state")


def assert_same_run(workdir, reference):
    step, arrays = final_state(workdir)
    ref_step, ref_arrays = final_state(reference)
    assert step == ref_step
    assert arrays.keys() == ref_arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], ref_arrays[key], err_msg=key)  # bit for bit
    assert metrics_without_timing(workdir) == metrics_without_timing(reference)
    best = Path(workdir) / "best"
    ref_best = Path(reference) / "best"
    assert sorted(os.listdir(best)) == sorted(os.listdir(ref_best))
    assert json.loads((Path(workdir) / "results.json").read_text()) == json.loads((Path(reference) / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    run(workdir)
    return workdir


def checkpoint_being_written(workdir):
    directory = Path(workdir) / "checkpoints"
    return directory.exists() and any("tmp" in p.name for p in directory.iterdir())


@pytest.mark.fast
@pytest.mark.parametrize("point", ["mid_epoch", "writing_checkpoint", "after_validation"])
def test_sigkill_then_resume_is_bit_identical(point, reference, tmp_path):
    proc = start(tmp_path)
    conditions = {
        "mid_epoch": lambda: (tmp_path / "checkpoints" / "6").exists() and 8 in metric_steps(tmp_path, "train"),
        # Orbax writes into a temporary directory and renames it when complete.
        "writing_checkpoint": lambda: len(metric_steps(tmp_path, "train")) >= 2 and checkpoint_being_written(tmp_path),
        "after_validation": lambda: len(metric_steps(tmp_path, "validation")) == 1,
    }
    kill_when(proc, conditions[point])
    proc.wait()
    # A checkpoint counts once Orbax has renamed its temporary directory to the step number.
    had_checkpoint = any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    out = run(tmp_path)
    assert ("resuming from checkpoint" in out) == had_checkpoint
    assert_same_run(tmp_path, reference)


@pytest.mark.fast
def test_sigterm_saves_and_exits_then_resumes(reference, tmp_path):
    proc = start(tmp_path)
    kill_when(proc, lambda: 12 in metric_steps(tmp_path, "train"), signal.SIGTERM)
    out = finish(proc, expect=PREEMPTED_EXIT_CODE)
    assert "stopped by SIGTERM at step" in out and "run the same command to resume" in out
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert stopped_at in [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    run(tmp_path)
    assert_same_run(tmp_path, reference)


def test_damaged_latest_checkpoint_is_skipped(reference, tmp_path):
    shutil.copytree(reference, tmp_path / "run")
    workdir = tmp_path / "run"
    last, _ = final_state(workdir)
    for path in (workdir / "checkpoints" / str(last) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated
    # And a write that never finished, as a kill leaves it.
    (workdir / "checkpoints" / f"{last + 1}.orbax-checkpoint-tmp-1").mkdir()
    out = run(workdir)
    assert f"checkpoint {last} in" in out and "is damaged" in out
    assert any(p.name.startswith(f"damaged-{last}") for p in (workdir / "checkpoints").iterdir())
    assert_same_run(workdir, reference)


def test_nan_stops_the_run_and_is_never_saved(conll_dir, tmp_path, monkeypatch):
    from gptjax import steps as steps_lib

    real = steps_lib.make_train_step

    def poisoned(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def step(state, batch, *frozen):
            state, metrics = step_fn(state, batch, *frozen)
            if int(state.step) >= 7:
                metrics = {**metrics, "loss": metrics["loss"] * np.nan}
                state = state._replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
            return state, metrics

        return step

    monkeypatch.setattr(steps_lib, "make_train_step", poisoned)
    config = tiny_config("token", conll_dir, **{"checkpoint.every_steps": 4, "train.log_every": 100})
    with pytest.raises(NonFiniteError, match="step 7: loss not finite"):
        train.train_and_evaluate(config, str(tmp_path))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4]
    for key, value in saved_arrays(tmp_path / "checkpoints" / "4" / "state").items():
        assert np.isfinite(value).all(), key


@pytest.mark.fast
def test_eight_devices_to_one_and_back(tmp_path):
    out = run(tmp_path, "--config.train.max_steps=6", devices=8)
    assert "8 devices" in out
    out = run(tmp_path, "--config.train.max_steps=12", devices=1)
    assert "resuming from checkpoint 6" in out and "1 devices" in out
    out = run(tmp_path, "--config.train.max_steps=18", devices=8)
    assert "resuming from checkpoint 12" in out
    assert final_state(tmp_path)[0] == 18
    assert [s for s in metric_steps(tmp_path, "validation")] == [6, 12, 18]


def test_config_that_matters_must_match(reference, tmp_path):
    shutil.copytree(reference, tmp_path / "run")
    out = run(tmp_path / "run", "--config.model.arch.n_embd=64", expect=1)
    assert "model.arch.n_embd=32" in out and "model.arch.n_embd=64" in out and "another --workdir" in out
    out = run(tmp_path / "run", "--config.train.batch_size=32", expect=1)
    assert "train.batch_size=16" in out and "train.batch_size=32" in out
    # Allowed, and said: more epochs (a longer schedule) and another peak lr. The run continues where it stopped.
    epoch_ends = metric_steps(reference, "validation")
    out = run(tmp_path / "run", "--config.train.num_epochs=3", "--config.train.learning_rate=2e-3")
    assert f"resuming from checkpoint {epoch_ends[-1]}" in out
    new_lr = f"the learning rate at step {epoch_ends[-1] + 1} becomes "
    assert f"the schedule's length changed from {epoch_ends[-1]} to {epoch_ends[-1] + epoch_ends[0]} steps" in out
    assert "resuming with a changed optimizer (train.learning_rate " in out and "-> 0.002)" in out
    assert out.count(new_lr) == 2 and "(was 0)" in out  # the old schedule had decayed to 0 at its end
    assert metric_steps(tmp_path / "run", "validation") == epoch_ends + [epoch_ends[-1] + epoch_ends[0]]


def test_labels_must_match(tmp_path):
    config = tiny_config("token", "synthetic")
    meta = {"config": config_json(config), "labels": ["O", "B-PER", "I-PER"]}
    check_compatible(meta, config, ["O", "B-PER", "I-PER"], tmp_path)
    with pytest.raises(ConfigError, match="labels"):
        check_compatible(meta, config, ["O", "B-LOC", "I-LOC"], tmp_path)


def test_resume_false_refuses_a_used_workdir(reference, tmp_path):
    shutil.copytree(reference, tmp_path / "run")
    out = run(tmp_path / "run", "--config.checkpoint.resume=false", expect=1)
    assert "holds a trained run" in out
