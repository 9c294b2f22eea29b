"""Tests for gptjax.synthetic: the demo NER corpus and the on-the-fly tokenizer (no network)."""

import subprocess
import sys

import pytest

from gptjax import data, synthetic, tasks

SIZES = (300, 100, 100)


@pytest.fixture(scope="module")
def corpus():
    return synthetic.make_ner_corpus(seed=0, sizes=SIZES)


@pytest.fixture(scope="module")
def tok(corpus):
    return synthetic.train_tokenizer(synthetic.corpus_texts(corpus["train"]), vocab_size=500)


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
    vocab = data.LabelVocab.from_tags(splits["train"])
    assert vocab.names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    data.check_token_labels(splits, vocab)  # every evaluation label is known


def test_tokenizer_is_gpt2_style(tok):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == 500
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == tok.unk_token_id == eos
    # add_prefix_space: every pre-split word is encoded as if preceded by a space.
    words = ["Reuters", "said", "Vinmar", "rose"]
    ids = tok(words, is_split_into_words=True)["input_ids"]
    assert ids == tok(" " + " ".join(words))["input_ids"] == tok(" ".join(words))["input_ids"]
    assert eos not in ids  # no special tokens added
    assert tok.decode(ids) == " Reuters said Vinmar rose"
    assert tok.decode(tok("naïve café 😀")["input_ids"]) == " naïve café 😀"  # byte-level: no unknowns


def test_tokenizer_round_trip_through_save_pretrained(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(loaded) is type(tok)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.pad_token_id == tok.pad_token_id and loaded.eos_token_id == tok.eos_token_id
    batch = [["Shares", "of", "Kestrel", "Systems", "rose", "."], ["Zara", "Okafor"]]
    a = tok(batch, is_split_into_words=True)
    b = loaded(batch, is_split_into_words=True)
    assert a["input_ids"] == b["input_ids"]
    assert [a.word_ids(i) for i in range(2)] == [b.word_ids(i) for i in range(2)]
    assert loaded("The meeting in Tbilisi")["input_ids"] == tok("The meeting in Tbilisi")["input_ids"]


def test_tokenizer_training_deterministic_across_processes(corpus, tok):
    texts = synthetic.corpus_texts(corpus["train"])
    assert synthetic.train_tokenizer(texts, vocab_size=500).get_vocab() == tok.get_vocab()
    # The Rust trainer's hash maps are seeded per process: check a fresh process agrees.
    code = ("import json; from gptjax import synthetic; "
            f"c = synthetic.make_ner_corpus(seed=0, sizes={SIZES!r}); "
            "t = synthetic.train_tokenizer(synthetic.corpus_texts(c['train']), vocab_size=500); "
            "print(json.dumps(t.backend_tokenizer.to_str()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json
    assert json.loads(out.stdout) == tok.backend_tokenizer.to_str()
