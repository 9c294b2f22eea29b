"""Offline use: the demos that need no download, and what a config that needs the hub says without it."""

from gptjax import tasks
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
