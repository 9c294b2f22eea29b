"""Tests for gptjax/data: readers, label checks, encoding (alignment), bucketing and batching (no network)."""

import json
import logging
import os
import sys

import numpy as np
import pytest

from gptjax import tasks
from gptjax.config import base_config
from gptjax.data import batching, encode, labels, readers
from gptjax.data.examples import SequenceExample, TokenExample
from gptjax.data.labels import LabelVocab
from gptjax.errors import DataError, SetupError
from gptjax.tokenizer import train_tokenizer

# Enough text for a BPE with merges, too little for long or rare words to be one token.
TEXTS = [
    "John Smith lives in New York and works for the United Nations .",
    "Shares of Acme Corp rose on Monday in London trading .",
    "Mary Jones visited Paris with Peter Brown last week .",
    "The company said profits rose in the first quarter .",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC
"""


def test_read_conll_docstart_blank_lines_and_columns(tmp_path):
    path = write(tmp_path, "train.conll", CONLL)
    examples = readers.read_conll(path)
    assert examples == [
        TokenExample(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
        TokenExample(("Peter", "Blackburn"), ("B-PER", "I-PER")),
        TokenExample(("BRUSSELS",), ("B-LOC",)),
    ]
    # Provenance: the line of each token, for error messages.
    assert examples[0].where(2) == f"{path}, line 5"
    assert examples[1].where(1) == f"{path}, line 10"
    assert examples[2].where() == f"{path}, line 12"


def test_iob1_to_iob2(tmp_path):
    assert labels.convert_iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-MISC"]) == (
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-MISC")
    path = write(tmp_path, "t.conll", "a I-ORG\nb I-ORG\nc O\nd I-PER\n\ne I-LOC\n")
    assert [ex.tags for ex in readers.read_conll(path, iob1_to_iob2=True)] == [
        ("B-ORG", "I-ORG", "O", "B-PER"), ("B-LOC",)]
    assert readers.read_conll(path)[0].tags[0] == "I-ORG"  # only on request


def test_conll_column_count_mismatch_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.conll", "a X B-PER\nb X O\n\nc O\n")
    with pytest.raises(DataError, match=r"bad\.conll, line 4: expected 3 columns.*found 2"):
        readers.read_conll(path)


def test_conll_single_column_rejected(tmp_path):
    path = write(tmp_path, "one.conll", "\n\nword\n")
    with pytest.raises(DataError, match=r"one\.conll, line 3"):
        readers.read_conll(path)


def test_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin.conll"
    path.write_bytes(b"a O\nb O\nM\xfcnchen B-LOC\n")
    with pytest.raises(DataError, match=r"latin\.conll, line 3: not valid UTF-8 \(byte offset 9, column 2"):
        readers.read_conll(str(path))


def test_empty_split_is_an_error(tmp_path):
    path = write(tmp_path, "empty.conll", "-DOCSTART- O\n\n\n")
    with pytest.raises(DataError, match=r"empty\.conll: no sentences found \(empty split\)"):
        readers.read_conll(path)


# ----------------------------------------------------------------------------- JSONL


def test_read_token_jsonl(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}\n\n'
                                      '{"tokens": ["c"], "ner_tags": ["O"]}\n')
    examples = readers.read_token_jsonl(path)
    assert examples == [TokenExample(("a", "b"), ("B-X", "I-X")), TokenExample(("c",), ("O",))]
    assert examples[1].where() == f"{path}, line 3"


@pytest.mark.parametrize("line, message", [
    ('{"tokens": ["a"], "tags": ["O"]', "line 2: not valid JSON"),
    ('{"tokens": ["a"]}', "line 2: missing key 'tags'"),
    ('{"tags": ["O"]}', "line 2: missing key 'tokens'"),
    ('{"tokens": ["a", "b"], "tags": ["O"]}', "line 2: 2 tokens but 1 tags"),
    ('["a", "O"]', "line 2: expected a JSON object"),
])
def test_token_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "dev.jsonl", '{"tokens": ["x"], "tags": ["O"]}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        readers.read_token_jsonl(path)
    assert "dev.jsonl" in str(err.value) and message in str(err.value)


# ----------------------------------------------------------------------------- CSV / TSV


def test_read_csv_with_quoted_multiline_field(tmp_path):
    path = write(tmp_path, "train.csv", 'text,label\n"hello, world",pos\n"two\nlines",neg\n\nlast one,pos\n')
    examples = readers.read_sequence_file(path)
    assert examples == [SequenceExample("hello, world", "pos"), SequenceExample("two\nlines", "neg"),
                        SequenceExample("last one", "pos")]
    assert [ex.line for ex in examples] == [2, 3, 6]


def test_read_tsv_and_jsonl_sequence(tmp_path):
    tsv = write(tmp_path, "a.tsv", "sentence\tlabel\tid\nit is good\t1\t7\nbad\t0\t8\n")
    assert readers.read_sequence_file(tsv) == [SequenceExample("it is good", "1"), SequenceExample("bad", "0")]
    js = write(tmp_path, "a.jsonl", '{"text": "fine", "label": 2}\n{"text": "ok", "label": "x"}\n')
    assert readers.read_sequence_file(js) == [SequenceExample("fine", "2"), SequenceExample("ok", "x")]
    custom = write(tmp_path, "c.jsonl", '{"review": "fine", "text": "no", "label": 1}\n')
    assert readers.read_sequence_file(custom, text_column="review")[0].text == "fine"


@pytest.mark.parametrize("text, message", [
    ("text,label\ngood,pos\nbad\n", "line 3: row has no label"),
    ("text,label\ngood,pos\n,neg\n", "line 3: row has no text"),
    ("body,label\ngood,pos\n", "line 1 (header): no text column"),
    ("text,target\ngood,pos\n", "line 1 (header): no 'label' column"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "valid.csv", text)
    with pytest.raises(DataError) as err:
        readers.read_sequence_file(path)
    assert "valid.csv" in str(err.value) and message in str(err.value)


def test_sequence_jsonl_errors(tmp_path):
    path = write(tmp_path, "s.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"s\.jsonl, line 2: missing key 'label'"):
        readers.read_sequence_file(path)
    path = write(tmp_path, "f.jsonl", '{"text": "a", "label": 1.5}\n')
    with pytest.raises(DataError, match=r"f\.jsonl, line 1: label must be"):
        readers.read_sequence_file(path)


# ----------------------------------------------------------------------------- directories


def test_load_splits_finds_files_by_stem_and_dev_alias(tmp_path):
    write(tmp_path, "train.iob", "a B-X\nb O\n")
    write(tmp_path, "dev.txt", "c O\n")
    write(tmp_path, "test.jsonl", '{"tokens": ["d"], "tags": ["B-X"]}\n')
    write(tmp_path, "notes.csv", "text,label\nx,y\n")
    splits = tasks.TOKEN.load_splits(str(tmp_path))
    assert set(splits) == {"train", "validation", "test"}
    assert splits["validation"] == [TokenExample(("c",), ("O",))]
    assert splits["test"][0].tags == ("B-X",)


def test_missing_split_file_names_directory_and_names(tmp_path):
    write(tmp_path, "train.csv", "text,label\na,b\n")
    with pytest.raises(DataError) as err:
        tasks.SEQUENCE.load_splits(str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "no validation file" in msg
    assert "validation.csv" in msg and "dev.tsv" in msg and "dev.jsonl" in msg


def test_two_files_for_one_split_is_an_error(tmp_path):
    write(tmp_path, "train.csv", "text,label\na,b\n")
    write(tmp_path, "train.tsv", "text\tlabel\na\tb\n")
    with pytest.raises(DataError, match="several train files"):
        tasks.SEQUENCE.load_splits(str(tmp_path), splits=("train",))


def test_path_like_source_never_goes_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        tasks.TOKEN.load_splits(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- Hugging Face


def test_splits_from_hf_token_classlabel():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    features = Features({"tokens": List(Value("string")),
                         "ner_tags": List(ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"]))})
    rows = {"tokens": [["John", "Smith", "ran"], ["Paris"]], "ner_tags": [[1, 2, 0], [3]]}
    ds = DatasetDict({s: Dataset.from_dict(rows, features=features) for s in ("train", "validation", "test")})
    splits = readers.splits_from_hf(ds, readers.token_examples_from_hf, name="org/conll")
    assert splits["train"] == [TokenExample(("John", "Smith", "ran"), ("B-PER", "I-PER", "O")),
                               TokenExample(("Paris",), ("B-LOC",))]
    assert splits["validation"][1].where() == "org/conll[validation], row 1"


def test_splits_from_hf_sequence_keeps_classlabel_order_and_skips_hidden_test():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["positive", "negative"])})
    ds = DatasetDict({
        "train": Dataset.from_dict({"sentence": ["good", "bad"], "label": [0, 1]}, features=features),
        "validation": Dataset.from_dict({"sentence": ["fine"], "label": [0]}, features=features),
        "test": Dataset.from_dict({"sentence": ["?"], "label": [-1]}, features=features),
    })
    splits = readers.splits_from_hf(ds, readers.sequence_examples_from_hf, name="glue/sst2")
    assert set(splits) == {"train", "validation"}  # labels hidden as -1: nothing to score
    assert splits["train"] == [SequenceExample("good", "positive"), SequenceExample("bad", "negative")]
    assert LabelVocab.from_classes(splits["train"]).names == ["positive", "negative"]


# ----------------------------------------------------------------------------- labels


def test_label_vocab_order_and_round_trip(tmp_path):
    train = [TokenExample(("a", "b", "c"), ("B-PER", "O", "I-LOC")), TokenExample(("d",), ("B-MISC",))]
    vocab = LabelVocab.from_tags(train)
    # O first, then sorted, with each B-/I- pair completed.
    assert vocab.names == ["O", "B-LOC", "B-MISC", "B-PER", "I-LOC", "I-MISC", "I-PER"]
    assert vocab.label2id["B-PER"] == 3 and vocab.id2label[4] == "I-LOC"
    vocab.save(str(tmp_path / "labels.json"))
    assert json.loads((tmp_path / "labels.json").read_text())["names"] == vocab.names
    assert LabelVocab.load(str(tmp_path / "labels.json")).label2id == vocab.label2id

    seq = [SequenceExample("x", label) for label in ("10", "2", "-1", "2")]
    assert LabelVocab.from_classes(seq).names == ["-1", "2", "10"]  # numeric order
    seq = [SequenceExample("x", label) for label in ("pos", "neg", "neutral")]
    assert LabelVocab.from_classes(seq).names == ["neg", "neutral", "pos"]


def test_unseen_label_error_names_file_line_and_label(tmp_path):
    write(tmp_path, "train.conll", "a B-PER\nb O\n")
    write(tmp_path, "validation.conll", "a O\n\nb O\nc B-ORG\n")
    write(tmp_path, "test.conll", "a O\n")
    splits = tasks.TOKEN.load_splits(str(tmp_path))
    vocab = LabelVocab.from_tags(splits["train"])
    with pytest.raises(DataError) as err:
        labels.check_token_labels(splits, vocab)
    msg = str(err.value)
    assert "validation.conll, line 4" in msg and "'B-ORG'" in msg and "unknown_label='error'" in msg


def test_unseen_label_map_to_o_logs_policy(tmp_path, caplog):
    splits = {"train": [TokenExample(("a",), ("B-PER",))],
              "test": [TokenExample(("a", "b"), ("B-ORG", "B-PER"), "t.conll", 3, 1)]}
    vocab = LabelVocab.from_tags(splits["train"])
    with caplog.at_level(logging.WARNING, logger="gptjax.data"):
        out = labels.check_token_labels(splits, vocab, policy="map_to_o")
    assert out["test"][0].tags == ("O", "B-PER")
    assert "map_to_o" in caplog.text and "t.conll, line 3" in caplog.text and " 1 token" in caplog.text


def test_unseen_sequence_label_error(tmp_path):
    write(tmp_path, "train.csv", "text,label\na,pos\nb,neg\n")
    write(tmp_path, "dev.csv", "text,label\na,pos\nb,neutral\n")
    splits = tasks.SEQUENCE.load_splits(str(tmp_path), splits=("train", "validation"))
    vocab = LabelVocab.from_classes(splits["train"])
    with pytest.raises(DataError, match=r"dev\.csv, line 3: label 'neutral' never appears"):
        labels.check_sequence_labels(splits, vocab)
    with pytest.raises(ValueError, match="token tasks only"):
        labels.check_sequence_labels(splits, vocab, policy="map_to_o")


# ----------------------------------------------------------------------------- encoding

WORDS = ("Zyxwv", "lives", "in", "New", "York", "Qwertyuiop", ".")
TAGS = ("B-PER", "O", "O", "B-LOC", "I-LOC", "B-ORG", "O")
VOCAB = LabelVocab(["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"])


def test_token_encoding_matches_gpt2_prefix_space_tokenizer(tok):
    from transformers import GPT2Tokenizer

    enc = encode.encode_token_split([TokenExample(WORDS, TAGS)], tok, VOCAB, max_length=64)
    reference = tok([list(WORDS)], is_split_into_words=True)  # add_prefix_space=True tokenizer
    assert enc.input_ids[0].tolist() == reference["input_ids"][0]
    assert enc.input_ids[0].dtype == np.int32
    # The same ids from a tokenizer built without add_prefix_space: alignment does not depend on it.
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    plain = GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                          add_prefix_space=False)
    assert plain([list(WORDS)], is_split_into_words=True)["input_ids"][0] != reference["input_ids"][0]
    assert encode.encode_token_split([TokenExample(WORDS, TAGS)], plain, VOCAB, 64).input_ids[0].tolist() \
        == reference["input_ids"][0]


def test_labels_on_first_subword_only(tok):
    enc = encode.encode_token_split([TokenExample(WORDS, TAGS)], tok, VOCAB, max_length=64)
    word_ids = tok([list(WORDS)], is_split_into_words=True).word_ids(0)
    assert len(word_ids) > len(WORDS)  # some words really are split into several subwords
    expected_labels, expected_words = [], []
    for t, w in enumerate(word_ids):
        first = t == 0 or word_ids[t - 1] != w
        expected_labels.append(VOCAB.label2id[TAGS[w]] if first else -100)
        expected_words.append(w if first else -1)
    assert enc.labels[0].tolist() == expected_labels
    assert enc.word_index[0].tolist() == expected_words
    assert enc.num_truncated == 0


def test_label_all_subwords_uses_inside_tag_after_b(tok):
    enc = encode.encode_token_split([TokenExample(WORDS, TAGS)], tok, VOCAB, 64, label_all_subwords=True)
    word_ids = tok([list(WORDS)], is_split_into_words=True).word_ids(0)
    for t, w in enumerate(word_ids):
        first = t == 0 or word_ids[t - 1] != w
        tag = TAGS[w] if first or TAGS[w] == "O" else "I-" + TAGS[w][2:]
        assert enc.labels[0][t] == VOCAB.label2id[tag]
        assert enc.word_index[0][t] == (w if first else -1)  # still first subwords only
    assert (enc.labels[0] >= 0).all()
    assert any(not (t == 0 or word_ids[t - 1] != w) and TAGS[w].startswith("B-")
               for t, w in enumerate(word_ids))  # the B -> I case really occurs


def test_truncation_counted_and_logged(tok, caplog):
    examples = [TokenExample(WORDS, TAGS), TokenExample(("the",), ("O",)), TokenExample(WORDS * 2, TAGS * 2)]
    with caplog.at_level(logging.WARNING, logger="gptjax.data"):
        enc = encode.encode_token_split(examples, tok, VOCAB, max_length=6)
    assert enc.num_truncated == 2
    assert enc.lengths.tolist() == [6, len(tok(" the")["input_ids"]), 6]
    assert enc.lengths[1] < 6
    assert "2 of 3 examples" in caplog.text and "max_length=6" in caplog.text


def test_sequence_encoding_no_special_tokens(tok):
    vocab = LabelVocab(["neg", "pos"])
    examples = [SequenceExample("John Smith lives in Paris", "pos"), SequenceExample("bad", "neg")]
    enc = encode.encode_sequence_split(examples, tok, vocab, max_length=3)
    assert enc.labels.tolist() == [1, 0] and enc.labels.dtype == np.int32
    assert enc.input_ids[0].tolist() == tok("John Smith lives in Paris")["input_ids"][:3]
    assert tok.eos_token_id not in enc.input_ids[1].tolist()
    assert enc.num_truncated == 1 and enc.word_index is None


def test_pad_token_id_falls_back_to_eos(tok):
    class NoPad:
        pad_token_id, eos_token_id = None, 7

    assert encode.pad_token_id(NoPad()) == 7
    assert encode.pad_token_id(tok) == tok.pad_token_id


# ----------------------------------------------------------------------------- batching


def fake_encoded(lengths, task="token"):
    """An EncodedSplit with example i made of tokens 1000 + i, so rows are recognisable."""
    ids = [np.full(n, 1000 + i, dtype=np.int32) for i, n in enumerate(lengths)]
    if task == "token":
        labels = [np.arange(n, dtype=np.int32) % 3 for n in lengths]
        words = [np.arange(n, dtype=np.int32) for n in lengths]
    else:
        labels, words = np.arange(len(lengths), dtype=np.int32) % 2, None
    return encode.EncodedSplit(task == "token", ids, labels, words, 0, [None] * len(lengths))


LENGTHS = [3, 40, 7, 64, 5, 33, 20, 1, 60, 9, 12, 50, 2, 31, 32, 17, 45, 8, 4, 6, 63, 10, 11]


def default_buckets(max_length):
    """The buckets of the default config's data.buckets at this max_length."""
    cfg = base_config().data
    cfg.max_length = max_length
    return batching.buckets_for(cfg)


def test_make_buckets_capped_at_max_length():
    assert default_buckets(128) == (32, 64, 128)
    assert default_buckets(100) == (32, 64, 100)
    assert default_buckets(1024) == (32, 64, 128, 256, 512, 1024)
    assert batching.make_buckets(16, (8, 32)) == (8, 16)


def test_bucket_shapes_and_contents():
    enc = fake_encoded(LENGTHS)
    batches = batching.epoch_batches(enc, 4, buckets=(16, 32, 64), pad_id=5)
    # Buckets hold 12, 4 and 7 examples: 3 + 1 + 2 batches.
    assert len(batches) == batching.num_batches(enc, 4, buckets=(16, 32, 64)) == 3 + 1 + 2
    for b in batches:
        T = b["input_ids"].shape[1]
        assert set(b) == {"input_ids", "attention_mask", "labels", "example_index", "word_index"}
        assert all(v.dtype == np.int32 for v in b.values())
        assert b["input_ids"].shape == b["attention_mask"].shape == b["labels"].shape == (4, T)
        assert b["example_index"].shape == (4,)
        real = b["example_index"][b["example_index"] >= 0]
        longest = max(LENGTHS[i] for i in real)
        assert T == min(t for t in (16, 32, 64) if t >= longest)  # smallest bucket that fits
        for row, i in enumerate(b["example_index"]):
            n = LENGTHS[i] if i >= 0 else 0
            assert b["attention_mask"][row].tolist() == [1] * n + [0] * (T - n)
            assert (b["input_ids"][row, n:] == 5).all() and (b["labels"][row, n:] == -100).all()
            assert (b["word_index"][row, n:] == -1).all()
            if i >= 0:
                assert (b["input_ids"][row, :n] == 1000 + i).all()
                assert b["labels"][row, :n].tolist() == (np.arange(n) % 3).tolist()


def test_shuffle_deterministic_per_seed_and_epoch():
    enc = fake_encoded(LENGTHS * 4)
    kwargs = dict(buckets=(16, 32, 64), pad_id=0, shuffle=True)

    def order(**kw):
        return [b["example_index"].tolist() for b in batching.epoch_batches(enc, 4, **kwargs, **kw)]

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    assert order(seed=1, epoch=0) != order(seed=2, epoch=0)
    assert order(seed=1, epoch=0) != [b["example_index"].tolist()
                                       for b in batching.epoch_batches(enc, 4, buckets=(16, 32, 64), pad_id=0)]
    flat = sorted(i for batch in order(seed=1, epoch=3) for i in batch if i >= 0)
    assert flat == list(range(len(enc)))  # a permutation: every example once


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_eval_batches_cover_every_example_once(task):
    enc = fake_encoded(LENGTHS, task)
    seen = []
    padding_rows = 0
    for b in batching.epoch_batches(enc, 4, buckets=(16, 32, 64), pad_id=9):
        assert b["input_ids"].shape[0] == 4
        for row, i in enumerate(b["example_index"]):
            if i >= 0:
                seen.append(int(i))
                continue
            padding_rows += 1
            assert (b["attention_mask"][row] == 0).all() and (b["input_ids"][row] == 9).all()
            assert (b["labels"][row] == -100).all()
            if task == "token":
                assert (b["word_index"][row] == -1).all()
        if task == "sequence":
            assert b["labels"].shape == (4,) and "word_index" not in b
    assert sorted(seen) == list(range(len(LENGTHS)))
    assert padding_rows == 1  # 23 examples in buckets of 12/4/7: one ragged batch was padded


def test_drop_last_drops_ragged_batches_per_bucket():
    enc = fake_encoded(LENGTHS)
    batches = batching.epoch_batches(enc, 4, buckets=(16, 32, 64), pad_id=0, shuffle=True, drop_last=True)
    # Buckets hold 12, 4 and 7 examples: 3 + 1 + 1 full batches.
    assert len(batches) == batching.num_batches(enc, 4, buckets=(16, 32, 64), drop_last=True) == 5
    assert all((b["example_index"] >= 0).all() for b in batches)


def test_start_offset_skips_seen_batches():
    enc = fake_encoded(LENGTHS * 3)
    kwargs = dict(buckets=(16, 32, 64), pad_id=0, seed=3, epoch=2, shuffle=True)
    full = list(batching.epoch_batches(enc, 4, **kwargs))
    rest = batching.epoch_batches(enc, 4, start=5, **kwargs)
    assert len(rest) == len(full) - 5
    for a, b in zip(full[5:], rest):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_example_longer_than_largest_bucket_is_rejected():
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        batching.epoch_batches(fake_encoded([3, 70]), 2, buckets=(16, 64), pad_id=0)


def test_end_to_end_directory_to_batches(tmp_path, tok):
    write(tmp_path, "train.conll", "John B-PER\nSmith I-PER\nlives O\n\nin O\nParis B-LOC\n")
    write(tmp_path, "validation.conll", "Mary B-PER\nran O\n")
    write(tmp_path, "test.conll", "Peter B-PER\n")
    splits = tasks.TOKEN.load_splits(str(tmp_path))
    vocab = LabelVocab.from_tags(splits["train"])
    splits = labels.check_token_labels(splits, vocab)
    enc = encode.encode_token_split(splits["train"], tok, vocab, max_length=32)
    (batch,) = batching.epoch_batches(enc, 2, buckets=default_buckets(32), pad_id=encode.pad_token_id(tok))
    assert batch["input_ids"].shape == (2, 32)
    first = batch["word_index"] >= 0
    assert [vocab.id2label[i] for i in batch["labels"][0][first[0]]] == ["B-PER", "I-PER", "O"]
    assert os.path.basename(enc.examples[0].source) == "train.conll"


def test_a_hub_dataset_without_the_datasets_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: import raises ImportError
    with pytest.raises(SetupError, match=r"^data.source='org/some-set': a Hugging Face Hub dataset needs the datasets "
                                         r"package: pip install 'gptjax\[hub\]'$"):
        tasks.get("sequence").load_splits("org/some-set")
    from gptjax.data.sources import load_data

    config = base_config()
    config.task, config.data.source = "sequence", "org/some-set"
    with pytest.raises(SetupError, match=r"needs the datasets package: pip install 'gptjax\[hub\]'$"):
        load_data(config)  # the command's path, the same one line
    tasks.SEQUENCE.synthetic(0, (4, 2, 2), str(tmp_path))  # local files need no datasets
    assert len(tasks.SEQUENCE.load_splits(str(tmp_path))["train"]) == 4
