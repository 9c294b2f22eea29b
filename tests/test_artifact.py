"""A trained run is a self-contained artifact: used without its data or config, read without being
written, never two writers at once, nothing truncated by a kill, nothing overwritten by accident."""

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config
from gptjax import workdir as wd
from gptjax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = "Hughes joined Drasu Telecom .\nKestrel Systems hired Adams in Bolivia .\n"


def snapshot(directory):
    """Every file under `directory` with its size and modification time."""
    out = {}
    for path in sorted(Path(directory).rglob("*")):
        stat = path.stat()
        out[str(path.relative_to(directory))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return out


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          input=stdin)


@pytest.fixture(scope="module")
def trained_run(small_ner, tmp_path_factory):
    """A token run trained on a copy of the data, which the test then deletes."""
    data = tmp_path_factory.mktemp("data")
    for split in ("train", "validation", "test"):
        shutil.copy(small_ner / f"{split}.conll", data / f"{split}.conll")
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config("token", data, **{"train.num_epochs": 1, "lora.rank": 2, "model.dropout": 0.0})
    train_and_evaluate(config, str(workdir))
    return workdir, data


@pytest.mark.fast
def test_workdir_is_used_without_data_config_or_writes(trained_run, small_ner, tmp_path):
    workdir, data = trained_run
    shutil.rmtree(data)  # the training data is gone
    before = snapshot(workdir)

    sentences = tmp_path / "in.txt"
    sentences.write_text(SENTENCES)
    out = cli("--mode=predict", f"--workdir={workdir}", f"--input={sentences}", f"--output={tmp_path / 'tags.jsonl'}")
    assert out.returncode == 0, out.stderr
    tags = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    assert [t["words"][0] for t in tags] == ["Hughes", "Kestrel"]

    # eval of the run's own split names the missing data and the way out; a named file works.
    out = cli("--mode=eval", f"--workdir={workdir}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(data) in out.stderr and "--input=FILE" in out.stderr
    out = cli("--mode=eval", f"--workdir={workdir}", f"--input={small_ner / 'test.conll'}",
              f"--output={tmp_path / 'metrics.json'}")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["num_examples"] == 24

    out = cli("--mode=export", f"--workdir={workdir}", f"--export_dir={tmp_path / 'hf'}")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert snapshot(workdir) == before  # the reading modes wrote nothing into the run


def test_eval_matches_training_results_and_the_export(trained_run, small_ner):
    workdir, _ = trained_run
    results = json.loads((workdir / "results.json").read_text())
    from gptjax.evaluate import run as evaluate

    metrics = evaluate(str(workdir), input_file=str(small_ner / "test.conll"))
    assert metrics["f1"] == pytest.approx(results["test"]["f1"])
    assert evaluate(str(workdir / "export"), input_file=str(small_ner / "test.conll"))["f1"] == pytest.approx(
        results["test"]["f1"], abs=1e-6)


def test_every_exported_file_honours_the_umask(trained_run):
    workdir, _ = trained_run
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (workdir / "export").iterdir() if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_resume_refuses_changed_data_and_tokenizer(small_ner, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_ner, data)
    config = tiny_config("token", data, **{"train.num_epochs": 1, "train.max_steps": 4})
    train_and_evaluate(config, str(tmp_path / "run"))
    with open(data / "train.conll", "a") as f:
        f.write("\nOne O\nmore O\nsentence O\n")
    config = tiny_config("token", data, **{"train.num_epochs": 2})
    from gptjax.errors import ConfigError

    with pytest.raises(ConfigError, match="the train split has 193 examples, 192 when the run started"):
        train_and_evaluate(config, str(tmp_path / "run"))
    shutil.copy(small_ner / "train.conll", data / "train.conll")
    # The run's own tokenizer is read back, not retrained: the original config resumes.
    assert train_and_evaluate(config, str(tmp_path / "run"))["steps"] > 4


def test_resume_refuses_a_changed_tokenizer(small_ner, tmp_path):
    from gptjax.data import synthetic
    from gptjax.data.examples import word_texts
    from gptjax.tokenizer import train_tokenizer
    from gptjax.errors import ConfigError

    texts = word_texts(synthetic.make_ner_corpus(seed=3, sizes=(192, 1, 1))["train"])
    train_tokenizer(texts, vocab_size=400).save_pretrained(tmp_path / "tok")
    config = tiny_config("token", small_ner, **{"tokenizer.name_or_path": tmp_path / "tok", "train.max_steps": 4})
    train_and_evaluate(config, str(tmp_path / "run"))
    train_tokenizer(texts[:50], vocab_size=400).save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match="tokenizer .*tok' is not the one the run started with"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_a_second_run_on_a_busy_workdir_is_refused(small_ner, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gptjax import workdir as wd\n"
                               f"with wd.lock(wd.path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = cli("--config=demo", f"--workdir={tmp_path}")
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "in use by another run" in out.stderr and f'"pid": {holder.pid}' in out.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with wd.lock(wd.path(tmp_path)):  # a killed holder leaves nothing stuck
        pass


def test_a_killed_write_leaves_the_old_file_or_the_new_one(tmp_path):
    """A writer rewriting a 16 MB file over and over, killed at several moments: every read finds
    one whole version. (A plain write_text leaves a truncated file here at nearly every kill.)"""
    target = tmp_path / "results.json"
    writer = ("import sys; from gptjax import workdir as wd\n"
              "i = 0\n"
              "while True:\n"
              "    wd.write_text(wd.path(sys.argv[1]), str(i % 10) * 16_000_000); i += 1\n"
              "    if i == 1: print('ready', flush=True)\n")
    for delay in (0.0, 0.01, 0.03, 0.05, 0.08, 0.13):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = target.read_text()
        assert len(text) == 16_000_000 and len(set(text)) == 1


def test_overwrites_are_refused(trained_run, tmp_path):
    workdir, _ = trained_run
    sentences = tmp_path / "in.txt"
    sentences.write_text(SENTENCES)
    for flags in ((), ("--overwrite",)):  # an output never lands on an input, --overwrite or not
        out = cli("--mode=predict", f"--workdir={workdir}", f"--input={sentences}", f"--output={sentences}", *flags)
        assert out.returncode != 0 and "which this command reads" in out.stderr
        assert sentences.read_text() == SENTENCES

    model = tmp_path / "base-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = cli("--mode=export", f"--workdir={workdir}", f"--export_dir={model}")
    assert out.returncode != 0 and "not an earlier gptjax export" in out.stderr
    assert os.listdir(model) == ["config.json"]
    out = cli("--mode=export", f"--workdir={workdir}", f"--export_dir={workdir / 'export'}")
    assert out.returncode != 0 and "writes nothing into it" in out.stderr
    for _ in range(2):  # an earlier export of a run is replaced
        out = cli("--mode=export", f"--workdir={workdir}", f"--export_dir={tmp_path / 'hf'}")
        assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_checkpoint_save_stops_the_run_and_resume_works(small_ner, tmp_path, monkeypatch, caplog):
    import orbax.checkpoint as ocp

    from gptjax.errors import CheckpointSaveError

    real_save = ocp.CheckpointManager.save
    calls = []

    def disk_full(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
    config = tiny_config("token", small_ner, **{"train.num_epochs": 1, "checkpoint.every_steps": 4})
    with pytest.raises(CheckpointSaveError, match="checkpoint 8 could not be written .*No space left on device"):
        train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    metrics_before = (tmp_path / "metrics.jsonl").read_bytes()
    with caplog.at_level("INFO", logger="gptjax"):
        results = train_and_evaluate(config, str(tmp_path))
    assert "resuming from checkpoint 4" in caplog.text
    assert results["steps"] == 13  # one epoch of the small corpus in its length buckets
    assert (tmp_path / "metrics.jsonl").read_bytes().startswith(metrics_before)  # appended, not rewritten


def test_damaged_best_model_is_one_clear_line(trained_run, tmp_path):
    workdir, _ = trained_run
    broken = tmp_path / "run"
    shutil.copytree(workdir, broken)
    for path in (broken / "best").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(b"")
    out = cli("--mode=predict", f"--workdir={broken}", stdin="Hughes .\n")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "the best model is damaged" in out.stderr and "--checkpoint=latest" in out.stderr
    out = cli("--mode=predict", f"--workdir={broken}", "--checkpoint=latest", stdin="Hughes .\n")
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line naming the file and line, or the key


def write_splits(directory, name, train, other=None):
    directory.mkdir(exist_ok=True)
    for split in ("train", "validation", "test"):
        (directory / f"{split}{name}").write_text(train if split == "train" or other is None else other)
    return directory


CONLL_OK = "Hughes B-PER\njoined O\nDrasu B-ORG\nTelecom I-ORG\n\n"


@pytest.mark.parametrize("tags, overrides, message", [
    ("Hughes PERSON\njoined O\n\n", {}, r"train.conll, line 1: tag 'PERSON' \('Hughes'\) is not IOB2"),
    ("Hughes 1\njoined 0\n\n", {}, r"train.conll, line 1: tag '1' .* integer ids: name them with data.label_names"),
    ("Hughes I-PER\njoined O\nDrasu I-ORG\nTelecom I-ORG\n\n", {}, r"look IOB1; set data.iob1_to_iob2=true"),
])
def test_token_labels_outside_iob2_are_refused_before_training(tmp_path, tags, overrides, message):
    source = write_splits(tmp_path / "data", ".conll", tags * 20)
    config = tiny_config("token", source, **overrides)
    from gptjax.errors import DataError

    with pytest.raises(DataError, match=message):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_integer_tags_with_label_names_and_iob1_with_conversion_train(tmp_path):
    source = write_splits(tmp_path / "ids", ".conll", "Hughes 1\njoined 0\nDrasu 2\n\n" * 20)
    config = tiny_config("token", source, **{"data.label_names": "('O', 'B-PER', 'B-ORG')", "train.max_steps": 2})
    assert train_and_evaluate(config, str(tmp_path / "a"))["steps"] == 2
    source = write_splits(tmp_path / "iob1", ".conll", "Hughes I-PER\njoined O\nDrasu I-ORG\nTelecom I-ORG\n\n" * 20)
    config = tiny_config("token", source, **{"data.iob1_to_iob2": "true", "train.max_steps": 2})
    assert train_and_evaluate(config, str(tmp_path / "b"))["steps"] == 2


def test_csv_row_with_an_extra_field_is_refused(tmp_path):
    source = write_splits(tmp_path / "data", ".csv", "text,label\ngood film,pos\nbad, really bad,neg\n")
    from gptjax.errors import DataError

    with pytest.raises(DataError, match=r"train.csv, line 3: 3 fields but the header has 2"):
        train_and_evaluate(tiny_config("sequence", source), str(tmp_path / "run"))


@pytest.mark.parametrize("key, value", [
    ("train.batch_size", "0"), ("train.max_steps", "0"), ("train.num_epochs", "-1"), ("data.max_length", "0"),
    ("train.eval_batch_size", "0"), ("checkpoint.every_steps", "0"), ("train.learning_rate", "-3e-5"),
    ("train.warmup_ratio", "1.5"), ("model.dropout", "1.0"),
])
def test_out_of_range_values_name_the_key(tmp_path, key, value):
    out = cli("--config=demo", f"--workdir={tmp_path}", f"--config.{key}={value}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"error: {key}=" in out.stderr and "must be" in out.stderr
    assert not any(tmp_path.iterdir())


def test_bad_paths_are_one_clear_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for args, message in [
        (["--config=demo", "--workdir="], "--workdir is empty"),
        (["--config=demo", f"--workdir={tmp_path / 'file'}"], "is a file, not a directory"),
        (["--mode=eval", f"--workdir={tmp_path / 'nothing'}"], "no such directory"),
        (["--mode=predict", f"--workdir={tmp_path}"], "neither a trained workdir"),
    ]:
        out = cli(*args)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert message in out.stderr, (args, out.stderr)


def test_damaged_model_files_are_one_clear_line(trained_run, tmp_path):
    workdir, _ = trained_run
    export = tmp_path / "export"
    shutil.copytree(workdir / "export", export)
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = cli("--mode=predict", f"--model_dir={export}", stdin="Hughes .\n")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "model.safetensors: damaged" in out.stderr  # its sha256 against the export's gptjax.json
    (export / "gptjax.json").unlink()  # an export without a manifest: safetensors' own check
    out = cli("--mode=predict", f"--model_dir={export}", stdin="Hughes .\n")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "model.safetensors: cannot be read as safetensors" in out.stderr
    shutil.copy(workdir / "export" / "model.safetensors", weights)
    (export / "config.json").write_text('{"model_type": "gpt2", ')
    out = cli("--mode=predict", f"--model_dir={export}", stdin="Hughes .\n")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "config.json" in out.stderr and "damaged" in out.stderr


# ---------------------------------------------------------------------------------------------
# Cloud storage: the workdir's own files through a filesystem that is not the local one


@pytest.fixture
def fake_gcs(monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store, pseudo_dirs = {}, [""]

        def __init__(self, *args, **kwargs):
            super().__init__()

    registry = importlib.import_module("fsspec.registry")._registry
    for name in ("gs", "gcs"):
        monkeypatch.setitem(registry, name, FakeGCS)
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    yield FakeGCS.store
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_workdir_files_on_a_cloud_path(fake_gcs, trained_run):
    from gptjax.reporting import Reporter, read_metrics

    workdir, _ = trained_run
    remote = wd.path("gs://bucket/run")
    wd.prepare_for_writing(remote)
    wd.write_json(remote / "results.json", {"f1": 0.5})
    reporter = Reporter(remote, 10)
    reporter.eval_line(3, "validation", 0, {"f1": 0.5})
    reporter.close()
    from gptjax.artifact import export
    from gptjax.tokenizer import load_run_tokenizer

    with wd.lock(remote):
        export(__import__("gptjax").from_pretrained(str(workdir / "export"), "token_classification"),
               load_run_tokenizer(workdir / "tokenizer"), remote / "export")
    assert not Path("gs:").exists() and not (ROOT / "gs:").exists()  # nothing landed in a local folder named gs:
    assert wd.read_json(remote / "results.json") == {"f1": 0.5}
    assert [l["split"] for l in read_metrics(remote / "metrics.jsonl")] == ["validation"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "gptjax.json"} <= {p.name for p in (remote / "export").iterdir()}
    assert fake_gcs and all("bucket/run/" in key for key in fake_gcs)
