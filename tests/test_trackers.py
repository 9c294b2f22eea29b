"""Trackers (gptjax/trackers.py): the config to TensorBoard as text and hparams; Weights & Biases,
offline, gets the config and the scalars metrics.jsonl holds, at the same steps."""

import glob
import importlib.util
import json
import os
import struct
import sys

import jax.numpy as jnp
import pytest
from etils import epath

from conftest import tiny_config
from gptjax import cli, malloc, trackers
from gptjax.config import apply_overrides, load_config
from gptjax.errors import ConfigError
from gptjax.reporting import Reporter, read_metrics


def tensorboard_summaries(directory):
    """Every Summary.Value in the event files under `directory` (TFRecord framing), with its step."""
    from tensorboardX.proto.event_pb2 import Event

    values = []
    for path in glob.glob(f"{directory}/**/events.out.tfevents.*", recursive=True):
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 16 + length
            values += [(event.step, value) for value in event.summary.value]
    return values


def wandb_records(directory):
    """The records of the offline run's .wandb file under `directory` (a LevelDB log of protobufs)."""
    from wandb.proto import wandb_internal_pb2

    [path] = {os.path.realpath(p) for p in glob.glob(f"{directory}/**/run-*.wandb", recursive=True)}  # and latest-run/
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_config_and_history(directory):
    config, history = {}, {}
    for record in wandb_records(directory):
        kind = record.WhichOneof("record_type")
        if kind in ("config", "run"):
            update = (record.config if kind == "config" else record.run.config).update
            config.update({item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in update})
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(record.history.step.num, {}).update(
                {k: v for k, v in items.items() if not k.startswith("_")})
    return config, history


def demo_config(**overrides):
    return apply_overrides(load_config("demo"), {k: str(v) for k, v in overrides.items()})


def test_tensorboard_gets_the_config_as_text_and_as_hparams(tmp_path):
    reporter = Reporter(epath.Path(tmp_path), 10, config=demo_config(**{"train.batch_size": 12}), primary_metric="f1")
    reporter.pending(1, {"loss": jnp.float32(2.5), "grad_norm": jnp.float32(0.75)})
    reporter.flush_train(0, lambda step: 1e-3)
    reporter.close()
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    summaries = {value.tag: value for _, value in tensorboard_summaries(tmp_path / "tensorboard")}
    assert "| train.batch_size | 12 |" in summaries["config/text_summary"].tensor.string_val[0].decode()
    start = HParamsPluginData.FromString(summaries["_hparams_/session_start_info"].metadata.plugin_data.content)
    hparams = start.session_start_info.hparams
    assert hparams["train.batch_size"].number_value == 12 and hparams["task"].string_value == "token"
    assert hparams["model.remat"].bool_value is False and json.loads(hparams["data.buckets"].string_value) == [16, 32, 64]
    experiment = HParamsPluginData.FromString(summaries["_hparams_/experiment"].metadata.plugin_data.content)
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["train/loss", "validation/f1", "test/f1"]
    assert "_hparams_/session_end_info" in summaries
    assert summaries["train/loss"].simple_value == 2.5


def test_unknown_and_missing_trackers_are_refused_before_the_restart(monkeypatch):
    with pytest.raises(ConfigError, match="train.report_to: unknown tracker 'mlflow'"):
        trackers.check(demo_config(**{"train.report_to": "tensorboard,mlflow"}))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))

    def restarted():
        raise AssertionError("restarted before the trackers were checked")

    monkeypatch.setattr(malloc, "restart_tuned", restarted)
    monkeypatch.setattr(sys, "argv", ["gptjax", "--config=demo", "--workdir=/nonexistent/w",
                                      "--config.train.report_to=wandb"])
    with pytest.raises(SystemExit, match=r"not installed: pip install 'gptjax\[wandb\]'"):
        cli.command()


def test_wandb_offline_gets_the_config_and_every_scalar_of_metrics_jsonl(small_ner, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from gptjax.train import train_and_evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # W&B's files then go into the workdir
    config = tiny_config("token", small_ner, **{"train.max_steps": 4, "train.num_epochs": 1, "train.log_every": 2,
                                                "train.report_to": "tensorboard,wandb"})
    train_and_evaluate(config, tmp_path / "run")

    logged_config, history = wandb_config_and_history(tmp_path / "run" / trackers.WANDB_DIR)
    assert logged_config["train"]["batch_size"] == 16 and logged_config["train"]["report_to"] == ["tensorboard", "wandb"]
    expected = {}
    for line in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        values = {f"{line['split']}/{k}": v for k, v in trackers.numbers(line).items() if k not in ("step", "epoch")}
        expected.setdefault(line["step"], {}).update(values)
    assert set(expected) == {2, 4} and "validation/f1" in expected[4] and "test/f1" in expected[4]
    assert set(history) == set(expected)
    for step, values in expected.items():
        assert history[step] == pytest.approx(values), step


def test_wandb_writer_alone(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    writer = trackers.WandB(epath.Path(tmp_path / "run"))
    writer.config({"train": {"learning_rate": 0.5}})
    writer.scalars(0, "run", {"resumed": False, "time": "now"})
    writer.scalars(3, "validation", {"epoch": 1, "f1": 0.25, "per_type": {"PER": {"f1": 0.1}}, "flag": True})
    writer.close()
    config, history = wandb_config_and_history(tmp_path / "w")
    assert config["train"] == {"learning_rate": 0.5} and history == {3: {"validation/f1": 0.25}}
    assert not (tmp_path / "run").exists()  # WANDB_DIR says where W&B writes
