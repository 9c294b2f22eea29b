"""--mode=predict: raw text in, JSON Lines out, the same answers as evaluation, from a workdir or an export."""

import io
import json
import logging
from pathlib import Path

import pytest

import run
from conftest import tiny_config
from conftest import evaluation_predictions
from gptjax import predict
from gptjax.predict import entity_spans, read_lines, split_words
from gptjax.train import train_and_evaluate


def test_split_words_keeps_offsets():
    line = "Mr. O'Neil paid $1,000.50 (really!) in Zürich 👍🏽\x07ok_1"
    words = split_words(line)
    assert [w for w, _, _ in words] == ["Mr", ".", "O", "'", "Neil", "paid", "$", "1,000.50", "(", "really", "!", ")",
                                        "in", "Zürich", "👍", "🏽", "ok_1"]
    assert all(line[s:e] == w for w, s, e in words)
    assert split_words("") == split_words("  \t ") == split_words("\x00\u200b") == []


def test_entity_spans_are_seqeval_strict_iob2():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-ORG", "I-PER", "I-ORG"]
    # A stray I-LOC opens nothing; B-ORG followed by I-PER ends at the ORG word.
    assert entity_spans(tags) == [("PER", 0, 2), ("LOC", 4, 5), ("ORG", 5, 6)]
    assert entity_spans([]) == []


def test_read_lines_replaces_bad_bytes_with_a_warning(caplog):
    stream = io.BytesIO(b"\xef\xbb\xbfone\r\n\ntw\xffo\nlast")
    with caplog.at_level(logging.WARNING, logger="gptjax"):
        lines = list(read_lines(stream, "in.txt"))
    assert lines == [(1, "one"), (2, ""), (3, "tw\ufffdo"), (4, "last")]
    assert "in.txt, line 3: not valid UTF-8" in caplog.text


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------
# Token task


@pytest.fixture(scope="module")
def token_run(small_ner, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("token_run")
    config = tiny_config("token", small_ner, **{"train.num_epochs": 1, "train.eval_batch_size": 8,
                                                "tokenizer.vocab_size": 300})  # a few test sentences exceed 64 tokens
    train_and_evaluate(config, str(workdir))
    return config, workdir


def _odd_lines(long_words):
    return [
        "",
        "   ",
        " ".join(long_words),  # far beyond max_length=64 tokens
        "Kestrel Systems 👍🏽 hired\x07 Hughes in Bolivia .",
    ]


def test_token_predict_matches_evaluation_and_the_export(token_run, tmp_path):
    config, workdir = token_run
    trained, encoded, expected = evaluation_predictions(workdir)
    examples = encoded.examples
    assert encoded.num_truncated > 0  # some sentences are cut at max_length: their tail is O

    long_words = [w for ex in examples for w in ex.tokens][:200]
    lines = [" ".join(ex.tokens) for ex in examples] + _odd_lines(long_words)
    source = tmp_path / "in.txt"
    source.write_bytes("\n".join(lines).encode("utf-8") + b"\nbad \xff\xfe byte\n")
    predictor = predict.Predictor(trained)
    predict.run(predictor, str(source), str(tmp_path / "workdir.jsonl"))
    out = _jsonl(tmp_path / "workdir.jsonl")
    assert [o["line"] for o in out] == list(range(1, len(lines) + 2))

    # The test split's sentences: the words they were read with, and evaluation's tags.
    n = len(examples)
    assert [o["words"] for o in out[:n]] == [list(ex.tokens) for ex in examples]
    assert [o["tags"] for o in out[:n]] == expected
    for i, (o, ex) in enumerate(zip(out[:n], examples)):
        lost_words = (encoded.word_index[i] >= 0).sum() < len(ex.tokens)
        assert (lost_words and o["truncated"]) or (not lost_words and o["truncated"] == (len(encoded.input_ids[i]) == 64 and o["truncated"]))
    assert any(o["truncated"] for o in out[:n])
    for o in out[:n]:
        spans = [(e["type"], e["start"], e["end"]) for e in o["entities"]]
        assert len(spans) == len(entity_spans(o["tags"]))
        for e in o["entities"]:
            assert o["text"][e["start"]:e["end"]] == e["text"]

    empty, blank, long, odd, bad = out[n:]
    for record in (empty, blank):
        assert record["words"] == record["tags"] == record["entities"] == [] and not record["truncated"]
    assert long["truncated"] and len(long["tags"]) == 200 and set(long["tags"][100:]) == {"O"}
    assert "👍" in odd["words"] and "hired" in odd["words"] and len(odd["tags"]) == len(odd["words"])
    assert bad["text"] == "bad \ufffd\ufffd byte"

    # The exported Hugging Face directory, through the command line: the same output.
    run.main(["--mode=predict", f"--model_dir={workdir / 'export'}", f"--input={source}",
              f"--output={tmp_path / 'export.jsonl'}", "--config.data.max_length=64", "--config.data.buckets=(16, 32, 64)",
              "--config.train.eval_batch_size=8"])
    assert _jsonl(tmp_path / "export.jsonl") == out


# ---------------------------------------------------------------------------------------------
# Sequence task


def test_sequence_predict_gives_labels_and_probabilities(sentiment_jsonl_dir, tmp_path, monkeypatch):
    config = tiny_config("sequence", sentiment_jsonl_dir, **{"data.max_length": 32, "data.buckets": "(16, 32)",
                                                             "train.num_epochs": 1})
    train_and_evaluate(config, str(tmp_path / "run"))
    trained, encoded, expected = evaluation_predictions(tmp_path / "run")
    examples = encoded.examples

    lines = [ex.text for ex in examples] + ["", " ".join(["good film"] * 40), "so bad 😡\x00"]
    out = predict.Predictor(trained).predict(lines)
    n = len(examples)
    assert [o["label"] for o in out[:n]] == expected
    for o in out[:n] + out[n + 1:]:
        probabilities = o["probabilities"]
        assert list(probabilities) == trained.labels
        assert abs(sum(probabilities.values()) - 1) < 1e-5
        assert o["label"] == max(probabilities, key=probabilities.get)
    assert out[n]["label"] is None and out[n]["probabilities"] is None
    assert out[n + 1]["truncated"] and not any(o["truncated"] for o in out[:n])

    # The export, reading standard input and writing standard output.
    stdin = io.TextIOWrapper(io.BytesIO("\n".join(lines).encode("utf-8")), encoding="utf-8")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    run.main(["--mode=predict", f"--model_dir={tmp_path / 'run' / 'export'}", "--config.data.max_length=32",
              "--config.data.buckets=(16, 32)", "--config.train.eval_batch_size=16"])
    from_export = [json.loads(line) for line in stdout.buffer.getvalue().decode("utf-8").splitlines()]
    assert from_export == out
