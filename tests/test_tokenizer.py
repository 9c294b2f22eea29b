"""Tests for gptjax.tokenizer: the on-the-fly GPT-2-style tokenizer, loading a saved one, and
the fingerprint run.json keeps (no network)."""

import subprocess
import sys

import pytest

from gptjax.data import synthetic
from gptjax.data.examples import word_texts
from gptjax.errors import CheckpointError
from gptjax.tokenizer import load_run_tokenizer, load_tokenizer, tokenizer_fingerprint, train_tokenizer

SIZES = (300, 100, 100)


@pytest.fixture(scope="module")
def corpus():
    return synthetic.make_ner_corpus(seed=0, sizes=SIZES)


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(word_texts(corpus["train"]), vocab_size=500)


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
    texts = word_texts(corpus["train"])
    assert train_tokenizer(texts, vocab_size=500).get_vocab() == tok.get_vocab()
    # The Rust trainer's hash maps are seeded per process: check a fresh process agrees.
    code = ("import json; from gptjax.data import synthetic; from gptjax.data.examples import word_texts; "
            "from gptjax.tokenizer import train_tokenizer; "
            f"c = synthetic.make_ner_corpus(seed=0, sizes={SIZES!r}); "
            "t = train_tokenizer(word_texts(c['train']), vocab_size=500); "
            "print(json.dumps(t.backend_tokenizer.to_str()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json
    assert json.loads(out.stdout) == tok.backend_tokenizer.to_str()


def test_load_keeps_or_sets_add_prefix_space(tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    assert load_tokenizer(tmp_path).add_prefix_space is True  # the saved setting
    plain = load_tokenizer(tmp_path, add_prefix_space=False)
    assert plain.add_prefix_space is False
    assert plain("Reuters said")["input_ids"] != tok("Reuters said")["input_ids"]


def test_fingerprint_follows_the_definition(corpus, tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    assert tokenizer_fingerprint(load_run_tokenizer(tmp_path)) == tokenizer_fingerprint(tok)
    smaller = train_tokenizer(word_texts(corpus["train"]), vocab_size=400)
    assert tokenizer_fingerprint(smaller) != tokenizer_fingerprint(tok)


def test_run_tokenizer_that_cannot_load_is_refused(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="the tokenizer cannot be loaded"):
        load_run_tokenizer(tmp_path)
