"""Nothing a user does loses a file, and nothing damaged passes silently: a refused command writes
nothing, an output never lands on what the command reads or on a run or an export, export replaces
only its own files, damaged weights and edited labels are caught, and every bad value is one line."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import run
from gptjax.config import apply_overrides, base_config, load_config, validate
from gptjax.errors import ConfigError
from gptjax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
# The tiny run every hostile command is aimed at, as command-line flags (so that training
# commands can repeat them and change one key).
TINY = {
    "model.arch.n_layer": "1", "model.arch.n_embd": "32", "model.arch.n_head": "2", "tokenizer.vocab_size": "300",
    "train.batch_size": "16", "train.eval_batch_size": "16", "train.num_epochs": "1", "train.log_every": "5",
}
SENTENCES = "Hughes joined Drasu Telecom .\nKestrel Systems hired Adams in Bolivia .\n"


def flags(data, **changes):
    values = {**TINY, "data.source": str(data), **{k: str(v) for k, v in changes.items()}}
    return ["--config=demo", *(f"--config.{k}={v}" for k, v in values.items())]


def snapshot(root):
    """Every name under `root` (the lock file aside: its holder line is rewritten by each training
    command that takes it), with the sha256 of each file's bytes."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.name == ".lock":
            continue
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def main(*argv) -> str:
    """run.py's main in this process; the one-line error it exits with ('' on success)."""
    try:
        run.main(list(argv))
    except SystemExit as e:
        if e.code in (None, 0):
            return ""
        return str(e.code)
    return ""


@pytest.fixture(scope="module")
def world(small_ner, tmp_path_factory):
    """A trained run, its export, and a user's files, all under one root."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    shutil.copytree(small_ner, data)
    config = validate(apply_overrides(load_config("demo"), {**TINY, "data.source": str(data)}))
    train_and_evaluate(config, str(root / "run"))
    assert main("--mode=export", f"--workdir={root / 'run'}", f"--export_dir={root / 'export'}") == ""
    user = root / "user"
    user.mkdir()
    (user / "sentences.txt").write_text(SENTENCES)
    shutil.copy(data / "test.conll", user / "labelled.conll")
    return root


def hostile_commands(root):
    """(argv, what the one-line refusal says): commands that must change nothing."""
    r, e, u, data = root / "run", root / "export", root / "user", root / "data"
    train = lambda **changes: [*flags(data, **changes), f"--workdir={r}"]  # noqa: E731
    return [
        (train(**{"model.arch.n_layer": 2}), "model.arch.n_layer=1"),
        (train(**{"data.max_length": 32}), "data.max_length=64"),
        (train(**{"tokenizer.vocab_size": 500}), "tokenizer.vocab_size=300"),
        (train(**{"train.batch_size": 8}), "train.batch_size=16"),
        (train(**{"checkpoint.resume": "false"}), "holds a trained run"),
        (train(**{"checkpoint.resume": "false", "data.source": "synthetic"}), "holds a trained run"),
        (train(**{"data.source": "synthetic"}), "data.source"),
        ([*flags(data), f"--workdir={e}"], "not a gptjax run"),  # training into an export
        (["--mode=export", f"--model_dir={e}", f"--export_dir={r}"], "a trained run"),
        (["--mode=export", f"--model_dir={e}", f"--export_dir={r}", "--overwrite"], "a trained run"),
        (["--mode=export", f"--workdir={r}", f"--export_dir={r / 'export'}"], "overlaps the model being read"),
        (["--mode=export", f"--model_dir={e}", f"--export_dir={r / 'export'}"], "lies inside"),
        (["--mode=export", f"--workdir={r}", f"--export_dir={u}"], "not empty and not an earlier gptjax export"),
        (["--mode=export", f"--workdir={r}", f"--export_dir={u / 'labelled.conll'}"], "is a file"),
        (["--mode=eval", f"--workdir={r}", f"--input={u / 'labelled.conll'}", f"--output={u / 'labelled.conll'}"],
         "which this command reads"),
        (["--mode=eval", f"--workdir={r}", f"--output={r / 'results.json'}"], "which this command reads"),
        (["--mode=eval", f"--model_dir={e}", f"--input={u / 'labelled.conll'}", f"--output={r / 'results.json'}"],
         "a trained run"),
        (["--mode=eval", f"--workdir={r}", f"--output={data / 'test.conll'}"], "which this command reads"),
        (["--mode=eval", f"--workdir={r}", "--config.generate.temperature=nan"], "must be a finite number"),
        (["--mode=eval", f"--workdir={r}", "--config.model.arch.n_layer=3"], "cannot change"),
        (["--mode=predict", f"--workdir={r}", f"--input={u / 'sentences.txt'}", f"--output={r / 'metrics.jsonl'}"],
         "which this command reads"),
        (["--mode=predict", f"--workdir={r}", f"--input={u / 'sentences.txt'}", f"--output={u / 'sentences.txt'}",
          "--overwrite"], "which this command reads"),
        (["--mode=predict", f"--model_dir={e}", f"--input={u / 'sentences.txt'}", f"--output={e / 'tags.jsonl'}"],
         "which this command reads"),
        (["--mode=predict", f"--workdir={r}", f"--input={u / 'sentences.txt'}", f"--output={e / 'tags.jsonl'}"],
         "a gptjax export"),
        (["--mode=predict", f"--workdir={r}", f"--input={u / 'sentences.txt'}", f"--output={u}"], "is a directory"),
        (["--mode=predict", f"--workdir={r}", f"--input={u / 'missing.txt'}"], "no such file"),
        (["--mode=generate", f"--workdir={r}", f"--input={u / 'sentences.txt'}"], "needs a causal-LM model"),
    ]


@pytest.mark.fast
def test_hostile_commands_change_nothing(world):
    before = snapshot(world)
    for argv, message in hostile_commands(world):
        error = main(*argv)
        assert error.startswith("error: ") and message in error, (argv, error)
        assert "\n" not in error.strip(), error
        assert snapshot(world) == before, argv  # not a byte, not a name
    leftovers = [p for p in world.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers


def test_a_new_run_refuses_a_directory_of_other_files(world, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("mine\n")
    error = main(*flags(world / "data"), f"--workdir={tmp_path}")
    assert "holds metrics.jsonl but no run.json" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no lock, no run.json left


def test_a_start_that_fails_leaves_no_workdir(world, tmp_path):
    error = main(*flags(tmp_path / "nowhere"), f"--workdir={tmp_path / 'new'}")
    assert error.startswith("error: ") and "nowhere" in error
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    main(*flags(tmp_path / "nowhere"), f"--workdir={tmp_path / 'empty'}")
    assert not any((tmp_path / "empty").iterdir())  # the lock file went with the failed start


def test_a_workdir_orbax_cannot_glob_is_refused_before_anything(world, tmp_path):
    odd = tmp_path / "runs [1] **"
    error = main(*flags(world / "data"), f"--workdir={odd}")
    assert "a path with '**' cannot hold checkpoints" in error and not odd.exists()
    shutil.copytree(world / "run", odd)
    assert "cannot hold checkpoints" in main("--mode=eval", f"--workdir={odd}")


# ---------------------------------------------------------------------------------------------
# Export: its own files, and nothing else


def test_export_replaces_only_what_it_wrote(world, tmp_path):
    target = tmp_path / "hf"
    assert main("--mode=export", f"--workdir={world / 'run'}", f"--export_dir={target}") == ""
    manifest = json.loads((target / "gptjax.json").read_text())
    assert set(manifest["files"]) == {p.name for p in target.iterdir()} - {"gptjax.json"}
    (target / "README.md").write_text("# my model card\n")
    (target / "stale.bin").write_text("an earlier export's file the new one does not write")
    manifest["files"]["stale.bin"] = "0" * 64
    (target / "gptjax.json").write_text(json.dumps(manifest))
    assert main("--mode=export", f"--workdir={world / 'run'}", f"--export_dir={target}", "--checkpoint=latest") == ""
    names = {p.name for p in target.iterdir()}
    assert "README.md" in names and "stale.bin" not in names
    assert (target / "README.md").read_text() == "# my model card\n"

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main("--mode=export", f"--workdir={world / 'run'}", f"--export_dir={other}", "--overwrite") == ""
    assert (other / "notes.txt").read_text() == "keep me" and (other / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# Damage is caught when weights, labels or the tokenizer are read


def _scribble(path, offset, size=4096):
    """Random bytes written over part of a file; its size unchanged."""
    data = bytearray(path.read_bytes())
    offset = min(offset, max(len(data) - size, 0))
    data[offset:offset + size] = np.random.default_rng(offset).integers(0, 256, min(size, len(data)), np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.fast
@pytest.mark.parametrize("which", ["best", "latest"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_random_bytes_in_weights_are_caught(world, tmp_path, fraction, which):
    damaged = tmp_path / "run"
    shutil.copytree(world / "run", damaged)
    if which == "best":
        directory = damaged / "best"
    else:
        directory = max((damaged / "checkpoints").iterdir(), key=lambda p: int(p.name)) / "state"
    for data in (p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d"):  # Orbax's array files
        _scribble(data, int(data.stat().st_size * fraction))
    error = main("--mode=eval", f"--workdir={damaged}", f"--checkpoint={which}",
                 f"--input={world / 'user' / 'labelled.conll'}")
    assert f"the {which} {'model' if which == 'best' else 'checkpoint'} is damaged" in error


def test_resume_with_every_checkpoint_damaged_keeps_the_best_model(world, tmp_path):
    damaged = tmp_path / "run"
    shutil.copytree(world / "run", damaged)
    for data in (p for p in (damaged / "checkpoints").rglob("*") if p.is_file() and p.parent.name == "d"):
        _scribble(data, data.stat().st_size // 2)
    best = snapshot(damaged / "best")
    error = main(*flags(world / "data"), f"--workdir={damaged}")
    assert "no readable checkpoint to resume from" in error and "new --workdir" in error
    assert snapshot(damaged / "best") == best


def test_a_checkpoint_with_other_bytes_fails_its_checksums(tmp_path):
    """Arrays that read back fine but are not the ones saved: only the checksums can tell."""
    import jax.numpy as jnp

    from gptjax.checkpoint import Checkpoints, abstract_like
    from gptjax.errors import CheckpointError

    params = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}
    for name, tree in (("a", params), ("b", {**params, "w": params["w"].at[1, 2].set(-1.0)})):
        checkpoints = Checkpoints(tmp_path / name)
        checkpoints.save_best(1, tree, {})
        checkpoints.close()
    shutil.rmtree(tmp_path / "a" / "best" / "1" / "params")
    shutil.copytree(tmp_path / "b" / "best" / "1" / "params", tmp_path / "a" / "best" / "1" / "params")
    assert Checkpoints(tmp_path / "b", read_only=True).restore_best(abstract_like(params)) is not None
    with pytest.raises(CheckpointError, match="the best model is damaged .*array w differs from the checksum"):
        Checkpoints(tmp_path / "a", read_only=True).restore_best(abstract_like(params))


def test_a_damaged_export_is_caught(world, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(world / "export", export)
    weights = export / "model.safetensors"
    _scribble(weights, weights.stat().st_size // 2)
    error = main("--mode=predict", f"--model_dir={export}", f"--input={world / 'user' / 'sentences.txt'}")
    assert "model.safetensors: damaged" in error and "export it again" in error


def test_edited_labels_and_a_replaced_tokenizer_are_caught(world, tmp_path):
    labelled = f"--input={world / 'user' / 'labelled.conll'}"
    edited = tmp_path / "run"
    shutil.copytree(world / "run", edited)
    record = json.loads((edited / "run.json").read_text())
    labels = record["labels"]
    swapped = [labels[1], labels[0], *labels[2:]]
    (edited / "run.json").write_text(json.dumps({**record, "labels": swapped}))
    assert "labels.json has" in main("--mode=eval", f"--workdir={edited}", labelled)
    (edited / "labels.json").write_text(json.dumps({"names": swapped}))  # both edited alike
    assert "not the ones the model was trained with" in main("--mode=eval", f"--workdir={edited}", labelled)

    shutil.rmtree(edited)
    shutil.copytree(world / "run", edited)
    from gptjax.tokenizer import train_tokenizer

    train_tokenizer(["a b c d e f"] * 20, vocab_size=300).save_pretrained(str(edited / "tokenizer"))
    assert "not the tokenizer the run trained with" in main("--mode=eval", f"--workdir={edited}", labelled)


# ---------------------------------------------------------------------------------------------
# One line for every bad value, before any work


@pytest.mark.parametrize("key, value, message", [
    ("generate.temperature", "nan", "must be a finite number"),
    ("generate.temperature", "inf", "must be a finite number"),
    ("generate.temperature", "-1", "must be >= 0"),
    ("generate.max_new_tokens", "-1", "must be >= 1"),
    ("generate.top_p", "0", "must be > 0"),
    ("generate.top_p", "1.5", "<= 1"),
    ("generate.top_k", "-1", "must be >= 0"),
    ("generate.batch_size", "0", "must be >= 1"),
    ("generate.seed", str(2**64), "< 9223372036854775808"),
    ("generate.stop", "('',)", "stop strings must be non-empty"),
    ("train.warmup_ratio", "nan", "must be a finite number"),
    ("model.arch.n_layer", "0", "must be >= 1"),
    ("model.arch.n_embd", "-8", "must be >= 1"),
    ("model.arch.n_head", "3", "not divisible by model.arch.n_head=3"),
])
def test_bad_values_are_one_line(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(apply_overrides(load_config("demo"), {key: value}))


def test_generation_limits_are_checked_against_the_model(tmp_path):
    from gptjax.config import check_generation

    config = load_config("lm_demo")
    check_generation(config, 128, config.generate.prompt_length)  # the README's benchmark fits
    with pytest.raises(ConfigError, match=r"generate.prompt_length=65 \+ generate.max_new_tokens=64 exceed the model's "
                                          r"n_positions=128; lower them \(together at most 128\)"):
        check_generation(config, 128, 64 + 1)
    config.generate.max_new_tokens = 128
    with pytest.raises(ConfigError, match=r"max_new_tokens=128 leaves no room for a prompt .* \(at most 127\)"):
        check_generation(config, 128)

    from test_generate import _lm_checkpoint

    _lm_checkpoint(tmp_path / "lm")  # n_positions=48
    error = main("--mode=generate", f"--model_dir={tmp_path / 'lm'}", "--config.generate.max_new_tokens=48")
    assert error.startswith("error: ") and "n_positions=48" in error


@pytest.mark.parametrize("text, message", [
    ("def get_config(:\n", "line 1"),
    ("def get_config():\n    return 1 / 0\n", "get_config() raised at line 2: ZeroDivisionError"),
    ("import nothing_of_the_kind\n", "raised at line 1: ModuleNotFoundError"),
    ("x = 1\n", "defines no get_config()"),
    ("def get_config():\n    return {'task': 'token'}\n", "returned a dict, not an ml_collections ConfigDict"),
])
def test_broken_config_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "mine.py"
    path.write_text(text)
    error = main(f"--config={path}", f"--workdir={tmp_path / 'run'}")
    assert error.startswith(f"error: {path}") and message in error
    assert not (tmp_path / "run").exists()


def test_settings_a_task_cannot_use_stop_before_the_data(sentiment_jsonl_dir, tmp_path):
    error = main(*flags(sentiment_jsonl_dir, task="sequence", **{"data.unknown_label": "map_to_o"}),
                 f"--workdir={tmp_path / 'run'}")
    assert "does not apply to task='sequence'" in error and not (tmp_path / "run").exists()


def test_prompt_completion_limits_stop_before_training(tmp_path):
    rows = "".join(json.dumps({"prompt": f"the number after {i} is", "completion": f" {i + 1}"}) + "\n"
                   for i in range(40))
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(rows)
    lm = ["--config=lm_demo", f"--config.data.source={data}", "--config.model.arch.n_layer=1",
          "--config.model.arch.n_embd=32", "--config.model.arch.n_head=2", "--config.tokenizer.vocab_size=300"]
    error = main(*lm, "--config.data.max_length=2", "--config.data.buckets=(2,)", f"--workdir={tmp_path / 'a'}")
    assert "no labelled token left within data.max_length=2" in error and not (tmp_path / "a").exists()
    error = main(*lm, "--config.model.arch.n_positions=32", "--config.data.max_length=32",
                 "--config.generate.max_new_tokens=32", f"--workdir={tmp_path / 'b'}")
    assert "n_positions=32" in error and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# Full disks, Ctrl-C and SIGTERM: one line, no temporary files


def test_a_full_disk_stops_the_run_naming_the_checkpoint(small_ner, tmp_path, monkeypatch):
    import collections

    from gptjax import checkpoint
    from gptjax.errors import CheckpointSaveError

    config = validate(apply_overrides(load_config("demo"), {**TINY, "data.source": str(small_ner),
                                                            "checkpoint.every_steps": "4"}))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 1000, 1000))
    with pytest.raises(CheckpointSaveError, match=r"checkpoint 4 could not be written .*No space left on device: it "
                                                  r"needs .* MiB, 0.0 MiB are free"):
        train_and_evaluate(config, str(tmp_path))
    # A background write's failure names its own step (in Orbax's path), not the save it surfaced in.
    orbax_error = ValueError("RESOURCE_EXHAUSTED: Error writing ... at local file \"/w/checkpoints/8.orbax-checkpoint-"
                             "tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/\": ... [os_error_code='28']")
    assert str(CheckpointSaveError(10, "/w/checkpoints", orbax_error)).startswith(
        "checkpoint 8 could not be written to /w/checkpoints (No space left on device)")


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(world, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from gptjax import artifact

    def full(model, directory):
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(artifact, "save_pretrained", full)
    earlier = tmp_path / "hf"
    shutil.copytree(world / "export", earlier)
    before = snapshot(tmp_path)
    error = main("--mode=export", f"--workdir={world / 'run'}", f"--export_dir={earlier}")
    assert error == (f"error: --export_dir={earlier}: could not write the export (I/O error: No space left on device "
                     "(os error 28))")
    assert snapshot(tmp_path) == before  # the earlier export untouched, no temporary directory left


def test_float16_on_a_cpu_is_refused_in_every_mode(world, tmp_path):
    training = "model.dtype='float16' cannot train (no loss scaling): use bfloat16"
    assert training in main(*flags(world / "data"), "--config.model.dtype=float16", f"--workdir={tmp_path / 'run'}")
    assert main("--mode=eval", f"--workdir={world / 'run'}", "--config.model.dtype=float16").endswith(
        "model.dtype='float16': XLA:CPU has no float16 matmul; on a CPU use bfloat16 (or float32)")
    assert not (tmp_path / "run").exists()


def test_float16_is_refused_for_training_on_any_platform_but_allowed_for_reading(monkeypatch):
    import jax

    from gptjax.config import check_platform

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # an accelerator, where float16 computes
    config = apply_overrides(base_config(), {"model.dtype": "float16"})
    check_platform(config, training=False)
    with pytest.raises(ConfigError, match=r"^model.dtype='float16' cannot train .*use bfloat16"):
        check_platform(config)


def _start(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigterm_during_predict_leaves_no_partial_output(world, tmp_path):
    many = tmp_path / "many.txt"
    many.write_text(SENTENCES * 20000)
    output = tmp_path / "tags.jsonl"
    proc = _start("--mode=predict", f"--workdir={world / 'run'}", f"--input={many}", f"--output={output}")
    deadline = time.time() + 240
    while not any(".tmp-" in p.name for p in tmp_path.iterdir()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.txt"]


def test_ctrl_c_during_set_up_is_one_line(world, tmp_path, monkeypatch, capsys):
    from gptjax import experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "prepare", interrupted)
    monkeypatch.setattr("gptjax.train.prepare", interrupted)
    with pytest.raises(SystemExit) as stopped:
        run.main([*flags(world / "data"), f"--workdir={tmp_path / 'run'}"])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: stopped by SIGINT")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Part-of-speech tags: task=tagging, scored by accuracy


def write_pos_corpus(directory):
    """CoNLL files of part-of-speech tags (no entities): two sentence shapes over small word lists."""
    rng = np.random.default_rng(0)
    words = {"DT": ["the", "a"], "JJ": ["big", "red", "old"], "NN": ["dog", "cat", "house", "tree"],
             "VB": ["sees", "likes", "eats"], ".": ["."]}
    shapes = (["DT", "JJ", "NN", "VB", "DT", "NN", "."], ["DT", "NN", "VB", "DT", "JJ", "NN", "."])
    directory.mkdir()
    for split, n in (("train", 240), ("validation", 24), ("test", 24)):
        sentences = ("\n".join(f"{rng.choice(words[t])} {t}" for t in shapes[rng.integers(2)]) for _ in range(n))
        (directory / f"{split}.conll").write_text("\n\n".join(sentences) + "\n")
    return directory


def test_pos_tags_train_as_tagging_and_are_refused_as_entities(tmp_path):
    data = write_pos_corpus(tmp_path / "pos")
    error = main(*flags(data), f"--workdir={tmp_path / 'ner'}")
    assert "is not IOB2" in error and "task=tagging" in error and not (tmp_path / "ner").exists()
    assert main(*flags(data, task="tagging", **{"train.num_epochs": 3, "train.learning_rate": "3e-3"}),
                f"--workdir={tmp_path / 'run'}") == ""
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["accuracy"] > 0.8 and "per_tag" in results["test"]
    assert main("--mode=export", f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'hf'}") == ""
    from gptjax.evaluate import run as evaluate

    exported = evaluate(str(tmp_path / "hf"), input_file=str(data / "test.conll"))
    assert exported["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-6)
