"""End to end through run.py: train on small files, check every output, reload the export."""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

import run
from conftest import evaluation_predictions, tiny_config
from gptjax.data import synthetic
from gptjax.data.examples import word_texts
from gptjax.tokenizer import train_tokenizer
from gptjax.reporting import read_metrics
from gptjax.config import apply_overrides, load_config
from gptjax.errors import ConfigError
from gptjax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path):
    return read_metrics(path) if Path(path).name == "metrics.jsonl" else [json.loads(l) for l in Path(path).read_text().splitlines()]


def check_outputs(workdir, task):
    workdir = Path(workdir)
    results = json.loads((workdir / "results.json").read_text())
    keys = {"f1", "precision", "recall", "accuracy"} if task == "token" else {"accuracy", "f1"}
    for split in ("validation", "test"):
        assert keys <= set(results[split])
    lines = read_jsonl(workdir / "metrics.jsonl")
    train = [l for l in lines if l["split"] == "train"]
    assert train and all({"step", "loss", "learning_rate", "grad_norm", "tokens_per_sec"} <= set(l) for l in train)
    assert [l["step"] for l in train] == sorted({l["step"] for l in train})  # no line twice
    assert {l["split"] for l in lines} == {"train", "validation", "test"}
    assert "test" in (workdir / "report.txt").read_text()
    assert list((workdir / "tensorboard").iterdir())
    assert json.loads((workdir / "labels.json").read_text())["names"]
    return results, lines


def check_export_predicts_like_gptjax(workdir, task, sentences):
    """transformers loads the export and predicts, word by word, what gptjax's evaluation did."""
    import torch

    export = Path(workdir) / "export"
    cls = transformers.GPT2ForTokenClassification if task == "token" else transformers.GPT2ForSequenceClassification
    model, info = cls.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(export, add_prefix_space=True)
    model.eval()
    predictions = []
    for sentence in sentences:
        if task == "token":
            enc = tokenizer(list(sentence), is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                ids = model(**enc).logits[0].argmax(-1).tolist()
            first = {}
            for position, word in enumerate(enc.word_ids()):
                if word is not None and word not in first:
                    first[word] = position
            predictions.append([model.config.id2label[ids[first[w]]] for w in range(len(sentence))])
        else:
            enc = tokenizer(sentence, return_tensors="pt")
            with torch.no_grad():
                predictions.append(model.config.id2label[int(model(**enc).logits[0].argmax())])
    return predictions


def gptjax_predictions(workdir, split):
    """gptjax's own word-level predictions on a split of the export, through the evaluation module."""
    _, encoded, preds = evaluation_predictions(Path(workdir) / "export", split)
    return encoded.examples, preds


@pytest.mark.parametrize("fixture", ["conll_dir", "token_jsonl_dir"])
def test_token_task_end_to_end(fixture, request, tmp_path):
    config = tiny_config("token", request.getfixturevalue(fixture))
    results = train_and_evaluate(config, str(tmp_path))
    saved, lines = check_outputs(tmp_path, "token")
    assert saved["test"]["f1"] == results["test"]["f1"]
    # It learned something in 4 tiny epochs. The loss, not the F1, says so reliably: the test F1
    # of this 1-layer model moves between 0.06 and 0.31 with the seed (dropout's draws), before
    # and after gptjax's dropout changed how it draws them; the loss falls from 2.1 to 0.6 in each.
    losses = [l["loss"] for l in lines if l["split"] == "train"]
    assert losses[-1] < 0.5 * losses[0] and results["test"]["f1"] > 0.03
    # Evaluation lines per epoch; the test line last.
    assert [l["split"] for l in lines if l["split"] != "train"] == ["validation"] * 4 + ["test"]
    examples, preds = gptjax_predictions(tmp_path, "test")
    assert len(preds) == len(examples)  # every example counted, though 45 is not a multiple of 16
    hf_preds = check_export_predicts_like_gptjax(tmp_path, "token", [ex.tokens for ex in examples[:12]])
    assert hf_preds == preds[:12]


@pytest.mark.parametrize("fixture", ["sentiment_csv_dir", "sentiment_jsonl_dir"])
def test_sequence_task_end_to_end(fixture, request, tmp_path):
    config = tiny_config("sequence", request.getfixturevalue(fixture), **{"data.max_length": 32, "data.buckets": "(16, 32)"})
    results = train_and_evaluate(config, str(tmp_path))
    check_outputs(tmp_path, "sequence")
    assert {"mcc", "per_class"} <= set(results["test"])
    assert results["test"]["accuracy"] > 0.8  # one sentiment word decides the label
    examples, preds = gptjax_predictions(tmp_path, "test")
    assert len(preds) == len(examples)
    assert check_export_predicts_like_gptjax(tmp_path, "sequence", [ex.text for ex in examples[:12]]) == preds[:12]


def test_pretrained_checkpoint_directory(conll_dir, tmp_path):
    """model.name_or_path pointing at a Hugging Face directory (weights and tokenizer files)."""
    corpus = synthetic.make_ner_corpus(seed=1, sizes=(300, 1, 1))["train"]
    tokenizer = train_tokenizer(word_texts(corpus), vocab_size=400)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    hf_model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    config = tiny_config("token", conll_dir, **{"model.init": "pretrained", "model.name_or_path": tmp_path / "base",
                                                "tokenizer.name_or_path": "none", "train.num_epochs": 1})
    train_and_evaluate(config, str(tmp_path / "run"))
    check_outputs(tmp_path / "run", "token")


def test_same_seed_same_metrics(conll_dir, tmp_path):
    def metrics(workdir):
        config = tiny_config("token", conll_dir, **{"train.num_epochs": 1, "model.dropout": 0.1})
        train_and_evaluate(config, str(workdir))
        return [{k: v for k, v in l.items() if k != "tokens_per_sec"} for l in read_jsonl(Path(workdir) / "metrics.jsonl")]

    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


def test_eval_and_export_modes(conll_dir, tmp_path):
    import torch

    args = ["--config=demo", f"--workdir={tmp_path}", f"--config.data.source={conll_dir}",
            "--config.model.arch.n_layer=1", "--config.model.arch.n_embd=32", "--config.train.num_epochs=1",
            "--config.tokenizer.vocab_size=300"]
    run.main(args)
    test_f1 = json.loads((tmp_path / "results.json").read_text())["test"]["f1"]
    # The training command with a reading mode added: its overrides repeat the run's own values.
    run.main(args + ["--mode=eval", "--split=test", f"--output={tmp_path.parent / 'eval_test.json'}"])
    assert json.loads((tmp_path.parent / "eval_test.json").read_text())["f1"] == test_f1
    run.main(["--mode=eval", f"--workdir={tmp_path}", "--split=validation", "--checkpoint=latest",
              f"--output={tmp_path.parent / 'eval_validation.json'}"])
    assert "f1" in json.loads((tmp_path.parent / "eval_validation.json").read_text())
    with pytest.raises(SystemExit, match="the trained run has model.arch.n_layer=1, which a reading mode cannot change"):
        run.main(["--mode=eval", f"--workdir={tmp_path}", "--config.model.arch.n_layer=2"])
    out = tmp_path.parent / f"{tmp_path.name}-hf"
    run.main(args + ["--mode=export", f"--export_dir={out}"])
    exported = transformers.GPT2ForTokenClassification.from_pretrained(out)
    assert exported.config.num_labels == 9
    kept = transformers.GPT2ForTokenClassification.from_pretrained(tmp_path / "export")
    for (name, a), (_, b) in zip(exported.state_dict().items(), kept.state_dict().items()):
        assert torch.equal(a, b), name  # the best checkpoint is what training exported


def test_config_overrides_are_typed():
    config = apply_overrides(load_config("ner"), {"train.learning_rate": "3e-5", "train.max_steps": "7",
                                                  "data.label_all_subwords": "true", "data.buckets": "(64, 128)"})
    assert config.train.learning_rate == 3e-5 and config.train.max_steps == 7
    assert config.data.label_all_subwords is True and config.data.buckets == (64, 128)
    with pytest.raises(ConfigError, match=r"--config.train.learnin_rate: unknown key"):
        apply_overrides(load_config("ner"), {"train.learnin_rate": "1"})
    with pytest.raises(ConfigError, match=r"--config.trian.seed: unknown key 'trian'"):
        apply_overrides(load_config("ner"), {"trian.seed": "1"})
    with pytest.raises(ConfigError, match=r"--config.train.batch_size=big: not a valid int"):
        apply_overrides(load_config("ner"), {"train.batch_size": "big"})
    with pytest.raises(ConfigError, match=r"--config.data.iob1_to_iob2=maybe: not a valid bool"):
        apply_overrides(load_config("ner"), {"data.iob1_to_iob2": "maybe"})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("nre")



@pytest.mark.parametrize("key, text, expected", [
    ("data.buckets", "64,128", (64, 128)),
    ("data.buckets", " 64 , 128 ", (64, 128)),
    ("data.buckets", "(64, 128)", (64, 128)),  # a Python literal still reads
    ("data.label_names", "O,B-PER,I-PER", ("O", "B-PER", "I-PER")),
    ("lora.targets", "attn.c_attn, mlp.c_fc", ("attn.c_attn", "mlp.c_fc")),
    ("generate.stop", "four", ("four",)),
    ("generate.stop", r"\n", ("\n",)),  # as a shell passes --config.generate.stop=\n or "\n"
    ("generate.stop", r"'\n\n',###", ("\n\n", "###")),
    ("generate.stop", "','", (",",)),  # quoted, an item may hold a comma
    ("generate.stop", "é", ("é",)),
    ("generate.stop", "", ()),
])
def test_tuple_keys_take_comma_lists(key, text, expected):
    section, leaf = key.split(".")
    assert apply_overrides(load_config("ner"), {key: text})[section][leaf] == expected


def test_every_tuple_key_reads_its_default_back():
    from gptjax.config import base_config

    config = base_config()
    tuples = {f"{s}.{k}": v for s, section in config.items() if hasattr(section, "items")
              for k, v in section.items() if isinstance(v, tuple) and v}
    assert "data.synthetic_sizes" in tuples and "data.buckets" in tuples
    for key, value in tuples.items():
        for text in (",".join(map(str, value)), repr(value)):
            section, leaf = key.split(".")
            assert apply_overrides(base_config(), {key: text})[section][leaf] == value, (key, text)


@pytest.mark.parametrize("key, text, form", [
    ("data.buckets", "a,b", "a comma list of integers, e.g. --config.data.buckets=64,128,256"),
    ("data.buckets", "1.5,2", "a comma list of integers"),
    ("data.buckets", "(1,", "a comma list of integers"),
    ("data.label_names", "(1, 2)", "a comma list of strings, e.g. --config.data.label_names=O,B-PER,I-PER"),
    ("generate.stop", "'a", "a comma list of strings"),
])
def test_a_wrong_tuple_says_the_form_it_wants(key, text, form):
    with pytest.raises(ConfigError, match=f"--config.{key}=.*: not a valid tuple \\(expected {form}"):
        apply_overrides(load_config("ner"), {key: text})

def _run_cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_cli_errors_are_one_clear_line(tmp_path):
    out = _run_cli("--config=ner", f"--workdir={tmp_path}", "--config.train.lr=1")
    assert out.returncode != 0 and "error: --config.train.lr: unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_hub_configs_fail_fast_offline(tmp_path):
    for name in ("ner", "sst2"):
        out = _run_cli(f"--config={name}", f"--workdir={tmp_path / name}", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        assert out.returncode != 0, out.stderr
        assert "Traceback" not in out.stderr
        assert "--config.data.source" in out.stderr and "--config=demo" in out.stderr


def test_bad_data_stops_before_training(tmp_path, conll_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "validation", "test"):
        (bad / f"{split}.conll").write_text((conll_dir / f"{split}.conll").read_text())
    lines = (bad / "validation.conll").read_text().splitlines()
    lines[3] = lines[3] + " extra-column"
    (bad / "validation.conll").write_text("\n".join(lines) + "\n")
    out = _run_cli("--config=demo", f"--workdir={tmp_path / 'run'}", f"--config.data.source={bad}")
    assert out.returncode != 0
    assert "validation.conll" in out.stderr and "line 4" in out.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_demo_reaches_its_f1_in_float32_and_bfloat16(tmp_path):
    """The main job: the demo config as the README runs it, and in bfloat16 compute."""
    f1 = {}
    for dtype in ("float32", "bfloat16"):
        config = apply_overrides(load_config("demo"), {"model.dtype": dtype})
        f1[dtype] = train_and_evaluate(config, str(tmp_path / dtype))["test"]["f1"]
    assert f1["float32"] >= 0.9, f1
    assert abs(f1["bfloat16"] - f1["float32"]) < 0.03, f1


def test_version():
    done = subprocess.run([sys.executable, "-m", "gptjax", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == f"gptjax {importlib.metadata.version('gptjax')}"


def test_help_config_lists_every_key_with_its_default_and_meaning():
    from gptjax.config import base_config

    done = subprocess.run([sys.executable, "-m", "gptjax", "--help-config"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[2:]}

    def keys(node, prefix=""):
        for k, v in node.items():
            yield from keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [prefix + k]

    assert set(keys(base_config())) <= set(lines)
    assert lines["train.learning_rate"].split()[2] == "2e-05" and "AdamW" in lines["train.learning_rate"]
    assert "lora.*" in lines  # a section's own comment is listed too


def test_a_training_config_error_is_reported_before_the_restart(monkeypatch, capsys):
    from gptjax import cli, malloc

    def restarted():
        raise AssertionError("restarted before the config was checked")

    monkeypatch.setattr(malloc, "restart_tuned", restarted)
    monkeypatch.setattr(sys, "argv", ["gptjax", "--config=demo", "--workdir=/nonexistent/w", "--config.train.learnin_rate=1"])
    with pytest.raises(SystemExit, match="--config.train.learnin_rate: unknown key"):
        cli.command()
