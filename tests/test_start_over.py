"""--start_over: a used workdir's run is moved aside into WORKDIR/previous/TIME/, whole, and a new
run trains from step 0; nothing is moved when the command is refused."""

import json
import os
import shutil

import pytest

from gptjax import cli, workdir as wd
from gptjax.errors import ConfigError
from gptjax.reporting import read_metrics


def tiny_args(workdir, source, **overrides):
    """The command line of conftest's tiny_config: a 1-layer model, 4 steps, checkpoints at 2 and 4."""
    values = {"task": "token", "data.source": source, "model.arch.n_layer": 1, "model.arch.n_embd": 64,
              "model.arch.n_head": 2, "tokenizer.vocab_size": 400, "train.batch_size": 16,
              "train.eval_batch_size": 16, "train.num_epochs": 1, "train.max_steps": 4, "train.log_every": 2,
              "checkpoint.every_steps": 2, **overrides}
    return ["--config=demo", f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in values.items())]


def snapshot(directory):
    """Every file under `directory` (relative path -> bytes)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def run_files(workdir):
    return {k: v for k, v in snapshot(workdir).items() if not k.startswith((wd.PREVIOUS_DIR + os.sep, wd.LOCK_FILE))}


@pytest.fixture(scope="module")
def trained(small_ner, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    cli.main(tiny_args(workdir, small_ner))
    return workdir


def test_a_changed_config_is_refused_with_advice_naming_start_over(trained, small_ner, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    before = run_files(workdir)
    for change in ({"train.batch_size": 8}, {"checkpoint.resume": "false"}):
        with pytest.raises(SystemExit) as e:
            cli.main(tiny_args(workdir, small_ner, **change))
        assert "--start_over" in str(e.value), e.value
    assert run_files(workdir) == before and not (workdir / wd.PREVIOUS_DIR).exists()


def test_start_over_moves_the_run_aside_whole_and_trains_from_step_0(trained, small_ner, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    first = run_files(workdir)
    assert any(k.startswith("checkpoints" + os.sep) for k in first) and "metrics.jsonl" in first

    with caplog.at_level("INFO", logger="gptjax"):
        cli.main([*tiny_args(workdir, small_ner, **{"train.batch_size": 8}), "--start_over"])
    [aside] = os.listdir(workdir / wd.PREVIOUS_DIR)
    assert snapshot(workdir / wd.PREVIOUS_DIR / aside) == first  # every file of the old run, unchanged
    assert str(workdir / wd.PREVIOUS_DIR / aside) in caplog.text
    run = json.loads((workdir / "run.json").read_text())
    assert run["config"]["train"]["batch_size"] == 8
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["split"] == "run" and lines[0]["step"] == 0 and not lines[0]["resumed"]
    assert [l["step"] for l in read_metrics(workdir / "metrics.jsonl") if l["split"] == "train"] == [2, 4]
    assert "resuming" not in caplog.text

    # A second start-over keeps both earlier runs, each whole.
    second = run_files(workdir)
    cli.main([*tiny_args(workdir, small_ner), "--start_over"])
    asides = sorted(os.listdir(workdir / wd.PREVIOUS_DIR))
    assert len(asides) == 2 and aside in asides
    assert snapshot(workdir / wd.PREVIOUS_DIR / aside) == first
    [newer] = set(asides) - {aside}
    assert snapshot(workdir / wd.PREVIOUS_DIR / newer) == second
    assert json.loads((workdir / "run.json").read_text())["config"]["train"]["batch_size"] == 16


def test_start_over_moves_nothing_when_the_new_run_is_refused(trained, small_ner, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    before = run_files(workdir)
    for bad in ({"data.source": tmp_path / "no-such-data"}, {"train.batch_size": 0}):
        with pytest.raises(SystemExit):
            cli.main([*tiny_args(workdir, small_ner, **bad), "--start_over"])
        assert run_files(workdir) == before and not (workdir / wd.PREVIOUS_DIR).exists()


@pytest.mark.parametrize("mode", ["eval", "predict", "export", "generate", "benchmark"])
def test_start_over_is_refused_outside_training(trained, tmp_path, mode, capsys):
    before = run_files(trained)
    with pytest.raises(SystemExit):
        cli.main([f"--mode={mode}", f"--workdir={trained}", "--config=demo", f"--export_dir={tmp_path / 'e'}",
                  "--start_over"])
    assert "--start_over is for --mode=train" in capsys.readouterr().err
    assert run_files(trained) == before and not (trained / wd.PREVIOUS_DIR).exists()


def test_move_aside_never_reuses_a_name(tmp_path, monkeypatch):
    monkeypatch.setattr(wd.time, "strftime", lambda form, t=None: "2026-12-07T12-00-00")  # three in one second
    for n in range(3):
        (tmp_path / "run.json").write_text(str(n))
        aside = wd.move_aside(tmp_path, ["run.json", "missing"])
        assert (aside / "run.json").read_text() == str(n) and not (tmp_path / "run.json").exists()
    kept = sorted(p.name for p in (tmp_path / wd.PREVIOUS_DIR).iterdir())
    assert kept == ["2026-12-07T12-00-00", "2026-12-07T12-00-00-2", "2026-12-07T12-00-00-3"]
    assert wd.move_aside(tmp_path, ["run.json"]) is None


def test_library_start_over_on_a_new_workdir_just_trains(small_ner, tmp_path):
    from conftest import tiny_config
    from gptjax.train import train_and_evaluate

    config = tiny_config("token", small_ner, **{"train.max_steps": 2, "train.num_epochs": 1})
    train_and_evaluate(config, tmp_path / "new", start_over=True)
    assert (tmp_path / "new" / "run.json").exists() and not (tmp_path / "new" / wd.PREVIOUS_DIR).exists()
    with pytest.raises(ConfigError, match="--start_over"):
        train_and_evaluate(tiny_config("token", small_ner, **{"train.max_steps": 2, "train.batch_size": 8}),
                           tmp_path / "new")
