"""Offline use: the demos that need no download, and what a config that needs the hub says without it."""

from types import SimpleNamespace

import pytest

import gptjax
import run
from gptjax import tasks
from gptjax.model import GPT2Config
from gptjax.config import load_config
from gptjax.data import synthetic
from gptjax.train import train_and_evaluate


def test_the_sentiment_corpus_is_deterministic_balanced_and_labelled_by_its_words():
    corpus = synthetic.make_sentiment_corpus(seed=3, sizes=(400, 50, 50))
    assert corpus == synthetic.make_sentiment_corpus(seed=3, sizes=(400, 50, 50))
    assert [len(corpus[s]) for s in ("train", "validation", "test")] == [400, 50, 50]
    labels = [label for _, label in corpus["train"]]
    assert 0.4 < labels.count("positive") / len(labels) < 0.6
    for text, label in corpus["train"]:
        words = text.split()
        polar = [(w in synthetic.POSITIVE) != (words[i - 1] == "not") for i, w in enumerate(words)
                 if w in synthetic.POSITIVE or w in synthetic.NEGATIVE]
        assert polar and set(polar) == {label == "positive"}, text


def test_sequence_task_has_a_synthetic_corpus(tmp_path):
    tasks.SEQUENCE.synthetic(0, (20, 5, 5), str(tmp_path))
    splits = tasks.SEQUENCE.load_splits(str(tmp_path))
    assert {len(v) for v in splits.values()} == {20, 5} and splits["train"][0].label in synthetic.SENTIMENTS


def test_sequence_demo_trains_offline_to_a_clearly_better_than_chance_f1(tmp_path):
    results = train_and_evaluate(load_config("sequence_demo"), str(tmp_path))
    assert results["test"]["f1"] >= 0.85, results["test"]


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path):
    """The hub probe fails (whatever this machine's network) and the hub caches are empty; every
    global the probe switches to offline mode is restored afterwards."""
    import datasets
    from huggingface_hub import constants

    from gptjax.data import sources

    def refuse(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(sources, "socket", SimpleNamespace(create_connection=refuse))
    monkeypatch.setattr(sources, "_unreachable", [])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def main(*argv) -> str:
    """run.py's main in this process; the error it exits with ('' on success)."""
    try:
        run.main(list(argv))
    except SystemExit as e:
        return "" if e.code in (None, 0) else str(e.code)
    return ""


OFFLINE_ADVICE = ("is unreachable; offline, use local files (--config.data.source=DIR --config.model.name_or_path=DIR) "
                  "or a demo (--config=demo, --config=sequence_demo, --config=lm_demo)")


@pytest.mark.parametrize("name", ["ner", "sst2", "lm"])
def test_a_hub_config_offline_says_the_hub_is_unreachable_and_leaves_nothing(name, hub_unreachable, tmp_path):
    model = load_config(name).model.name_or_path
    new = tmp_path / "new"
    error = main(f"--config={name}", f"--workdir={new}")
    assert error == f"error: model.name_or_path={model!r}: not in the local cache, and the Hugging Face Hub " \
                    f"(huggingface.co) {OFFLINE_ADVICE}"
    assert not new.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(f"--config={name}", f"--workdir={existing}") == error
    assert list(existing.iterdir()) == []  # no .lock left behind


def test_a_local_model_with_a_hub_dataset_offline_names_the_dataset(hub_unreachable, tmp_path):
    model_dir = tmp_path / "gpt2"  # laid out as the hub serves a model: config.json, model.safetensors
    gptjax.save_pretrained(gptjax.init_model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8),
                                             "causal_lm", seed=0), model_dir)
    error = main("--config=ner", f"--workdir={tmp_path / 'run'}", f"--config.model.name_or_path={model_dir}")
    assert error.startswith("error: data.source='eriktks/conll2003': not in the local cache") and OFFLINE_ADVICE in error
    assert "HF_HUB_OFFLINE" not in error and not (tmp_path / "run").exists()


def test_with_the_hub_reachable_nothing_changes_to_offline_mode(monkeypatch):
    from huggingface_hub import constants

    from gptjax.data import sources

    monkeypatch.setattr(sources, "socket", SimpleNamespace(create_connection=lambda *a, **k: SimpleNamespace(close=lambda: None)))
    monkeypatch.setattr(sources, "_unreachable", [])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sources.use_cache_only_if_hub_unreachable()
    assert constants.HF_HUB_OFFLINE is False and sources._unreachable == []
    assert "could not load it (OSError: x)" in sources.hub_failure("data.source", "a/b", OSError("x"))
