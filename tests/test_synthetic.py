"""Tests for gptjax.data.synthetic: the demo NER corpus (no network)."""

import pytest

from gptjax import tasks
from gptjax.data import synthetic
from gptjax.data.labels import LabelVocab, check_token_labels

SIZES = (300, 100, 100)


@pytest.fixture(scope="module")
def corpus():
    return synthetic.make_ner_corpus(seed=0, sizes=SIZES)


def entities(example):
    """(type, text) of each IOB2 entity in an example."""
    out, words, kind = [], [], None
    for word, tag in zip(example.tokens + ("",), example.tags + ("O",)):
        if tag.startswith("I-"):
            words.append(word)
            continue
        if kind is not None:
            out.append((kind, " ".join(words)))
        kind, words = (tag[2:], [word]) if tag.startswith("B-") else (None, [])
    return out


def test_corpus_deterministic(corpus):
    again = synthetic.make_ner_corpus(seed=0, sizes=SIZES)
    assert again == corpus
    assert synthetic.make_ner_corpus(seed=1, sizes=SIZES)["train"] != corpus["train"]
    # Each split has its own generator: resizing one split leaves the others alone.
    resized = synthetic.make_ner_corpus(seed=0, sizes=(300, 100, 7))
    assert resized["train"] == corpus["train"] and len(resized["test"]) == 7
    assert [len(corpus[s]) for s in ("train", "validation", "test")] == list(SIZES)


def test_tags_are_valid_iob2_with_all_types(corpus):
    types = set()
    multiword = False
    for split in corpus.values():
        for ex in split:
            assert len(ex.tokens) == len(ex.tags) > 0
            prev = "O"
            for tag in ex.tags:
                assert tag == "O" or tag[:2] in ("B-", "I-")
                if tag.startswith("I-"):
                    assert prev != "O" and prev[2:] == tag[2:], ex  # IOB2: I-X continues an X
                    multiword = True
                prev = tag
            types |= {kind for kind, _ in entities(ex)}
    assert types == {"PER", "ORG", "LOC", "MISC"}
    assert multiword


def test_evaluation_splits_hold_unseen_and_seen_entities(corpus):
    train = {e for ex in corpus["train"] for e in entities(ex)}
    for split in ("validation", "test"):
        found = [e for ex in corpus[split] for e in entities(ex)]
        unseen = [e for e in found if e not in train]
        assert 0.1 < len(unseen) / len(found) < 0.9, split  # some new, most familiar in kind
    # The held-out name lists never reach the training split.
    held_out = {name for pools in (synthetic.ORGANISATIONS, synthetic.LOCATIONS, synthetic.EVENTS)
                for name in pools[1]}
    assert not held_out & {text for _, text in train}
    assert held_out & {text for ex in corpus["test"] for _, text in entities(ex)}


def test_write_conll_round_trips_through_load_splits(corpus, tmp_path):
    directory = synthetic.write_corpus(corpus, str(tmp_path / "demo"))
    splits = tasks.TOKEN.load_splits(directory)
    assert splits == corpus
    vocab = LabelVocab.from_tags(splits["train"])
    assert vocab.names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    check_token_labels(splits, vocab)  # every evaluation label is known
