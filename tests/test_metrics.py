"""Tests for gptjax.metrics: metrics against seqeval / scikit-learn, and batch bookkeeping."""

import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from seqeval import metrics as sq
from seqeval.scheme import IOB2
from sklearn import metrics as skm

from gptjax import metrics as ev

TYPES = ["PER", "LOC", "ORG"]
ID2LABEL = ["O"] + [f"{p}-{t}" for t in TYPES for p in ("B", "I")]
LABEL2ID = {t: i for i, t in enumerate(ID2LABEL)}
GARBAGE = 10_000  # a "prediction" at positions that must never be read


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def random_iob2(rng: random.Random, length: int) -> list[str]:
    """A valid IOB2 sequence: I-X only right after B-X or I-X."""
    tags = []
    for _ in range(length):
        prev = tags[-1] if tags else "O"
        r = rng.random()
        if prev != "O" and r < 0.35:
            tags.append("I-" + prev[2:])
        elif r < 0.6:
            tags.append("O")
        else:
            tags.append("B-" + rng.choice(TYPES))
    return tags


def noisy_prediction(rng: random.Random, gold: list[str], noise: float) -> list[str]:
    """Gold with some tags replaced by any tag at all, so the result is often not valid IOB2."""
    return [rng.choice(ID2LABEL) if rng.random() < noise else t for t in gold]


def random_corpus(seed: int, n: int = 40, noise: float = 0.25):
    rng = random.Random(seed)
    gold = [random_iob2(rng, rng.randint(1, 15)) for _ in range(n)]
    pred = [noisy_prediction(rng, g, noise) for g in gold]
    return gold, pred


def seqeval_reference(gold, pred) -> dict:
    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    return {
        "f1": sq.f1_score(gold, pred, **strict),
        "precision": sq.precision_score(gold, pred, **strict),
        "recall": sq.recall_score(gold, pred, **strict),
        "accuracy": sq.accuracy_score(gold, pred),
        "lenient_f1": sq.f1_score(gold, pred, zero_division=0),
        "report": sq.classification_report(gold, pred, digits=4, **strict),
        "per_type": sq.classification_report(gold, pred, output_dict=True, **strict),
    }


def token_batches(examples, pred_tags, batch_size, seq_len, rng, keep_words=None):
    """Batches in the gptjax/data/batching.py format, built by hand.

    Each word gets 1-2 subword positions (word_index on the first only). The "model" output is
    carried in input_ids: the wanted label id at a word's first subword, GARBAGE everywhere
    else, so an evaluator that reads the wrong positions fails. The last batch is padded with
    rows copied from a real one but with example_index -1. Batch order is shuffled, as
    bucketing would.
    """
    rows = []
    for i, (ex, tags) in enumerate(zip(examples, pred_tags)):
        input_ids = np.full(seq_len, GARBAGE, np.int32)
        word_index = np.full(seq_len, -1, np.int32)
        mask = np.zeros(seq_len, np.int32)
        pos = 0
        for w, tag in enumerate(tags):
            width = rng.choice([1, 2])
            if pos + width > seq_len or (keep_words is not None and w >= keep_words[i]):
                break  # truncated: the rest of the words get no position
            input_ids[pos] = LABEL2ID[tag]
            word_index[pos] = w
            mask[pos : pos + width] = 1
            pos += width
        rows.append((i, input_ids, mask, word_index))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pad = batch_size - len(chunk)
        index = [r[0] for r in chunk] + [-1] * pad
        chunk = chunk + [chunk[0]] * pad  # padding rows look real apart from example_index
        batches.append(
            {
                "input_ids": np.stack([r[1] for r in chunk]),
                "attention_mask": np.stack([r[2] for r in chunk]),
                "word_index": np.stack([r[3] for r in chunk]),
                "labels": np.where(np.stack([r[3] for r in chunk]) >= 0, 0, -100).astype(np.int32),
                "example_index": np.asarray(index, np.int32),
            }
        )
    rng.shuffle(batches)
    return batches


def echo_predict(batch):
    """The fake model: its prediction is whatever the test stored in input_ids."""
    return batch["input_ids"]


# ---------------------------------------------------------------------------------------------
# token_metrics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_token_metrics_match_seqeval(seed):
    gold, pred = random_corpus(seed)
    got = ev.token_metrics(gold, pred)
    want = seqeval_reference(gold, pred)
    for key in ("f1", "precision", "recall", "accuracy", "lenient_f1"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["report"] == want["report"]
    assert got["num_examples"] == len(gold)
    want_types = {k: v for k, v in want["per_type"].items() if not k.endswith("avg")}
    assert set(got["per_type"]) == set(want_types)
    for name, row in want_types.items():
        assert got["per_type"][name] == {
            "precision": pytest.approx(row["precision"]),
            "recall": pytest.approx(row["recall"]),
            "f1": pytest.approx(row["f1-score"]),
            "support": row["support"],
        }


def test_random_noise_separates_strict_from_lenient():
    # Guards the test above: with invalid predicted sequences the two modes must disagree,
    # so a swap of strict and lenient in the module would be caught.
    gold, pred = random_corpus(0, n=200, noise=0.4)
    got = ev.token_metrics(gold, pred)
    assert got["f1"] != pytest.approx(got["lenient_f1"])


def test_perfect_prediction():
    gold, _ = random_corpus(1)
    got = ev.token_metrics(gold, gold)
    assert got["f1"] == got["precision"] == got["recall"] == got["accuracy"] == 1.0


def test_split_span_is_wrong():
    # B-PER I-PER predicted as B-PER B-PER: two wrong entities, not one right one.
    got = ev.token_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "B-PER", "O"]])
    assert got["f1"] == 0.0 and got["precision"] == 0.0 and got["recall"] == 0.0
    assert got["lenient_f1"] == 0.0
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["per_type"]["PER"]["support"] == 1


def test_span_opened_by_i_is_strict_miss_but_lenient_hit():
    # IOB1-ish prediction: I-LOC after O opens an entity for conlleval, not for strict IOB2.
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC", "I-LOC"]]
    got = ev.token_metrics(gold, pred)
    assert got["precision"] == 1.0
    assert got["recall"] == 0.5
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["lenient_f1"] == 1.0
    assert got["per_type"]["LOC"]["recall"] == 0.0
    assert got["per_type"]["PER"]["f1"] == 1.0


def test_all_o_gold_does_not_raise_or_warn():
    gold = [["O", "O", "O"], ["O"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # nothing to find and nothing found: the documented 1.0
        both_empty = ev.token_metrics(gold, gold)
        # invented entities: precision 0, and F1 0
        invented = ev.token_metrics(gold, [["B-PER", "O", "O"], ["O"]])
        # a model that finds nothing when there is something to find
        missed = ev.token_metrics([["B-LOC", "O", "O"], ["O"]], gold)
    assert both_empty["f1"] == both_empty["precision"] == both_empty["recall"] == 1.0
    assert both_empty["lenient_f1"] == 1.0 and both_empty["per_type"] == {}
    assert both_empty["report"]
    assert invented["f1"] == 0.0 and invented["precision"] == 0.0 and invented["lenient_f1"] == 0.0
    assert invented["accuracy"] == pytest.approx(3 / 4)
    assert missed["f1"] == 0.0 and missed["recall"] == 0.0
    assert "LOC" in missed["report"]


def test_token_metrics_rejects_length_mismatch():
    with pytest.raises(ValueError):
        ev.token_metrics([["O", "B-PER"]], [["O"]])
    with pytest.raises(ValueError):
        ev.token_metrics([["O"]], [])


# ---------------------------------------------------------------------------------------------
# TokenEvaluator
# ---------------------------------------------------------------------------------------------


def token_examples(gold):
    return [SimpleNamespace(words=[f"w{j}" for j in range(len(g))], tags=g) for g in gold]


@pytest.mark.parametrize("n,batch_size", [(7, 3), (10, 4), (5, 5), (1, 8)])
def test_token_evaluator_counts_every_example(n, batch_size):
    gold, pred = random_corpus(n, n=n)
    rng = random.Random(n)
    batches = token_batches(token_examples(gold), pred, batch_size, seq_len=32, rng=rng)
    evaluator = ev.TokenEvaluator(token_examples(gold), ID2LABEL)
    assert evaluator.predict(echo_predict, batches) == pred
    got = evaluator.run(echo_predict, batches)
    want = ev.token_metrics(gold, pred)
    assert got.pop("truncated_words") == 0
    assert got == want
    assert got["num_examples"] == n


def test_token_evaluator_accepts_jax_arrays():
    import jax.numpy as jnp

    gold, pred = random_corpus(3, n=5)
    batches = token_batches(token_examples(gold), pred, 2, 32, random.Random(0))
    evaluator = ev.TokenEvaluator(token_examples(gold), ID2LABEL)
    got = evaluator.run(lambda b: jnp.asarray(b["input_ids"]), batches)
    assert got["f1"] == ev.token_metrics(gold, pred)["f1"]


def test_token_evaluator_raises_on_missing_or_repeated_example():
    gold, pred = random_corpus(4, n=7)
    batches = token_batches(token_examples(gold), pred, 3, 32, random.Random(0))
    evaluator = ev.TokenEvaluator(token_examples(gold), ID2LABEL)
    with pytest.raises(ValueError, match="no prediction"):
        evaluator.run(echo_predict, batches[1:])
    with pytest.raises(ValueError, match="more than once"):
        evaluator.run(echo_predict, batches + batches[:1])
    # the same example twice inside one batch
    dup = {k: v.copy() for k, v in batches[0].items()}
    dup["example_index"][1] = dup["example_index"][0] = max(dup["example_index"][0], 0)
    with pytest.raises(ValueError, match="more than once"):
        evaluator.run(echo_predict, [dup] + batches[1:])


def test_token_evaluator_truncated_words_count_as_o():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "B-ORG"]]
    examples = token_examples(gold)
    # the model is right on every word it sees, but example 0 keeps only 3 words
    batches = token_batches(examples, gold, 2, 16, random.Random(0), keep_words=[3, 2])
    evaluator = ev.TokenEvaluator(examples, ID2LABEL)
    pred = evaluator.predict(echo_predict, batches)
    assert pred == [["B-PER", "I-PER", "O", "O", "O"], ["O", "B-ORG"]]
    got = evaluator.run(echo_predict, batches)
    assert got["truncated_words"] == 2
    assert got["precision"] == 1.0
    assert got["recall"] == pytest.approx(2 / 3)  # the cut-off LOC is a miss, not hidden
    assert got["accuracy"] == pytest.approx(5 / 7)
    assert got["per_type"]["LOC"]["support"] == 1


def test_token_evaluator_rejects_unknown_label_ids():
    gold = [["O", "B-PER"]]
    batches = token_batches(token_examples(gold), gold, 1, 8, random.Random(0))
    evaluator = ev.TokenEvaluator(token_examples(gold), ID2LABEL)
    bad = lambda b: np.where(b["word_index"] >= 0, len(ID2LABEL), 0)  # one past the end
    with pytest.raises(ValueError, match="outside"):
        evaluator.run(bad, batches)


def test_token_evaluator_rejects_word_index_past_the_example():
    gold = [["O", "B-PER"]]
    batches = token_batches(token_examples(gold), gold, 1, 8, random.Random(0))
    batches[0]["word_index"][0, 6] = 2  # only words 0 and 1 exist
    with pytest.raises(ValueError, match="word_index"):
        ev.TokenEvaluator(token_examples(gold), ID2LABEL).run(echo_predict, batches)


# ---------------------------------------------------------------------------------------------
# sequence_metrics and SequenceEvaluator
# ---------------------------------------------------------------------------------------------

CLASSES = ["negative", "neutral", "positive"]


def random_labels(seed, n=60):
    rng = random.Random(seed)
    gold = [rng.choice(CLASSES) for _ in range(n)]
    pred = [g if rng.random() < 0.6 else rng.choice(CLASSES) for g in gold]
    return gold, pred


@pytest.mark.parametrize("seed", range(5))
def test_sequence_metrics_match_sklearn(seed):
    gold, pred = random_labels(seed)
    got = ev.sequence_metrics(gold, pred, CLASSES)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro"))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(gold, pred))
    assert got["report"] == skm.classification_report(gold, pred, digits=4)
    p, r, f, s = skm.precision_recall_fscore_support(gold, pred, labels=CLASSES)
    for i, name in enumerate(CLASSES):
        assert got["per_class"][name] == {
            "precision": pytest.approx(p[i]),
            "recall": pytest.approx(r[i]),
            "f1": pytest.approx(f[i]),
            "support": s[i],
        }
    assert got["num_examples"] == len(gold)


def test_sequence_metrics_degenerate_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_class = ev.sequence_metrics(["positive"] * 4, ["positive"] * 4, CLASSES)
        all_wrong = ev.sequence_metrics(["positive"] * 3, ["negative"] * 3, CLASSES)
    assert one_class["accuracy"] == 1.0 and one_class["f1"] == 1.0 and one_class["mcc"] == 0.0
    assert one_class["per_class"]["neutral"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0
    }
    assert all_wrong["accuracy"] == 0.0 and all_wrong["f1"] == 0.0
    with pytest.raises(ValueError, match="not in label_names"):
        ev.sequence_metrics(["positive"], ["mixed"], CLASSES)


@pytest.mark.parametrize("n,batch_size", [(7, 3), (8, 4)])
def test_sequence_evaluator_counts_every_example(n, batch_size):
    gold, pred = random_labels(n, n=n)
    examples = [SimpleNamespace(text=f"t{i}", label=g) for i, g in enumerate(gold)]
    ids = [CLASSES.index(p) for p in pred]
    batches = []
    for start in range(0, n, batch_size):
        index = list(range(start, min(start + batch_size, n)))
        pad = batch_size - len(index)
        batches.append(
            {
                "input_ids": np.zeros((batch_size, 4), np.int32),
                "attention_mask": np.ones((batch_size, 4), np.int32),
                # the "model" output rides in labels; padding rows carry an out-of-range id
                "labels": np.asarray([ids[i] for i in index] + [GARBAGE] * pad, np.int32),
                "example_index": np.asarray(index + [-1] * pad, np.int32),
            }
        )
    batches.reverse()
    evaluator = ev.SequenceEvaluator(examples, CLASSES)
    predict = lambda b: b["labels"]
    assert evaluator.predict(predict, batches) == pred
    assert evaluator.run(predict, batches) == ev.sequence_metrics(gold, pred, CLASSES)
    with pytest.raises(ValueError, match="no prediction"):
        evaluator.run(predict, batches[:-1])
    with pytest.raises(ValueError, match="more than once"):
        evaluator.run(predict, batches + batches[-1:])


# ---------------------------------------------------------------------------------------------
# glue
# ---------------------------------------------------------------------------------------------


def test_every_task_primary_metric_is_a_key_its_metrics_have():
    from gptjax import tasks

    assert tasks.TOKEN.primary_metric in ev.token_metrics([["B-PER"]], [["B-PER"]])
    assert tasks.SEQUENCE.primary_metric in ev.sequence_metrics(["neutral"], ["neutral"], CLASSES)
    assert tasks.CAUSAL_LM.primary_metric in ev.lm_metrics(3.0, 2)
    assert tasks.TOKEN.improves(0.9, 0.8) and not tasks.TOKEN.improves(0.8, 0.9)
    assert tasks.CAUSAL_LM.improves(1.5, 2.0) and not tasks.CAUSAL_LM.improves(2.0, 1.5)  # a loss: lower wins
    assert tasks.CAUSAL_LM.improves(2.0, None)


def test_format_report():
    token = ev.token_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "I-LOC"]])
    text = ev.format_report("validation", token, ev.token_summary)
    assert text.startswith("== validation ==")
    assert "strict" in text and "lenient" in text and "0.6667" in text
    assert token["report"] in text
    seq = ev.sequence_metrics(*random_labels(0), CLASSES)
    text = ev.format_report("test", seq, ev.sequence_summary)
    assert f"{seq['mcc']:.4f}" in text and f"{seq['f1']:.4f}" in text
    assert seq["report"] in text
