"""The metrics of token, sequence and causal-LM tasks, on the host.

Training (the per-epoch validation pass), ``--mode=eval`` and the tests all score through here
(gptjax/evaluate.py runs the model over the batches), so a figure in a log, in report.txt and in
a test means the same thing.

- Token tasks (NER and friends): the headline figure is seqeval entity F1 with
  ``mode='strict', scheme=IOB2``. The conlleval-compatible figure (seqeval's default mode, which
  also counts spans opened by a stray ``I-`` tag) is reported as ``lenient_f1``, labelled as such.
- Tag sets without entities (POS, task ``tagging``): word accuracy, macro F1 over tags and
  per-tag scores.
- Sequence tasks: accuracy, macro F1, Matthews correlation and per-class scores (scikit-learn).
- Causal LM: ``loss``, the mean negative log-likelihood of every labelled token (token-weighted:
  the sum over the split's tokens over their number, each token once), and ``perplexity``, its
  exponential; for prompt/completion data also ``exact_match`` of the model's completions, when a
  function that writes them is given (generation lives elsewhere: gptjax/evaluate.py's
  completions_fn is where it is connected).

Gold truth always comes from the split's examples, never from the batch labels: an example whose
words were cut off by ``max_length`` keeps all its gold tags, and the words that got no prediction
count as predicted ``O``, so truncation lowers recall honestly instead of being hidden.

Everything here is host-side numpy / Python; the only device work is inside ``predict_fn``
(or ``nll_fn``). Which evaluator, summary and primary metric a task uses is its entry in
gptjax/tasks.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import seqeval.metrics
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Entities
import sklearn.metrics
from sklearn.exceptions import UndefinedMetricWarning

__all__ = [
    "token_metrics",
    "sequence_metrics",
    "lm_metrics",
    "TokenEvaluator",
    "TagEvaluator",
    "tag_metrics",
    "SequenceEvaluator",
    "CausalLMEvaluator",
    "format_report",
]

Batch = dict[str, np.ndarray]
PredictFn = Callable[[Batch], Any]
NllFn = Callable[[Batch], tuple[Any, Any]]  # batch -> (per-row NLL sums [B], per-row token counts [B])
CompletionsFn = Callable[[list[str]], list[str]]  # prompts -> the model's completions (text)
# What a word with no prediction (cut off by max_length) is taken to be.
_OUTSIDE = "O"
# Rows seqeval / sklearn add to a classification report that are not classes.
_AVERAGE_ROWS = ("micro avg", "macro avg", "weighted avg", "accuracy")


# ---------------------------------------------------------------------------------------------
# Metrics on strings
# ---------------------------------------------------------------------------------------------


def token_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity P/R/F1 (seqeval strict IOB2), per-type scores, word accuracy and lenient F1.

    Returns ``f1``, ``precision``, ``recall`` (strict IOB2, micro-averaged over entities),
    ``accuracy`` (over words), ``lenient_f1`` (seqeval default mode = conlleval), ``per_type``
    (``{type: {precision, recall, f1, support}}``, strict), ``report`` (seqeval
    classification_report, strict, digits=4) and ``num_examples``.

    Degenerate case, decided here: when neither gold nor predictions contain a single entity
    there is nothing to find and nothing was found wrongly, so precision = recall = F1 = 1.0
    (seqeval itself would say 0.0, or raise in classification_report). This keeps model
    selection meaningful on an all-``O`` split: a model that invents entities scores 0.0, one
    that does not scores 1.0. Whenever either side has entities, undefined ratios are 0.0
    (``zero_division=0``), as in seqeval. The same rule applies to ``lenient_f1``, judged on the
    lenient entity sets. Note that under strict IOB2 a predicted span opened by ``I-`` is no
    entity at all, so all-``O`` gold with such a prediction still scores strict F1 1.0 (lenient
    0.0).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sequences but {len(pred)} predicted ones")
    if not gold:
        raise ValueError("no examples to evaluate")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"example {i}: {len(g)} gold tags but {len(p)} predicted tags")
    gold = [list(g) for g in gold]
    pred = [list(p) for p in pred]

    num_words = sum(len(g) for g in gold)
    correct = sum(gt == pt for g, p in zip(gold, pred) for gt, pt in zip(g, p))
    # Zero words in total: nothing to get wrong (and avoids seqeval's 0/0).
    accuracy = correct / num_words if num_words else 1.0

    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    # Strict IOB2 entities only (a span opened by I- is not an entity here).
    strict_entities = sum(
        len(s) for seqs in (gold, pred) for s in Entities(seqs, IOB2, suffix=False).entities
    )
    # The lenient (conlleval) decoder counts I- openings too.
    lenient_entities = len(get_entities(gold)) + len(get_entities(pred))

    with warnings.catch_warnings():
        # zero_division=0 already silences seqeval; this is a belt for sklearn-side warnings.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if strict_entities:
            precision = seqeval.metrics.precision_score(gold, pred, **strict)
            recall = seqeval.metrics.recall_score(gold, pred, **strict)
            f1 = seqeval.metrics.f1_score(gold, pred, **strict)
            by_type = seqeval.metrics.classification_report(
                gold, pred, digits=4, output_dict=True, **strict
            )
            report = seqeval.metrics.classification_report(gold, pred, digits=4, **strict)
        else:
            # seqeval's report raises ValueError (max() of an empty sequence) here.
            precision = recall = f1 = 1.0
            by_type = {}
            report = "no entities in gold or predicted tags (strict IOB2); P = R = F1 = 1.0\n"
        if lenient_entities:
            lenient_f1 = seqeval.metrics.f1_score(gold, pred, zero_division=0)
        else:
            lenient_f1 = 1.0

    per_type = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in by_type.items()
        if name not in _AVERAGE_ROWS
    }
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "accuracy": float(accuracy),
        "lenient_f1": float(lenient_f1),
        "per_type": per_type,
        "report": report,
        "num_examples": len(gold),
    }


def sequence_metrics(gold: list[str], pred: list[str], label_names: list[str]) -> dict:
    """Accuracy, macro F1, MCC, per-class P/R/F1 and a classification report for class names.

    Returns ``accuracy``, ``f1`` (macro), ``mcc``, ``per_class``
    (``{name: {precision, recall, f1, support}}`` for every name in ``label_names``, in that
    order), ``report`` (sklearn classification_report, digits=4) and ``num_examples``.

    ``f1`` is scikit-learn's ``f1_score(average='macro')``: the mean over the classes that occur
    in gold or predictions. A class absent from both (only possible on a tiny split) has no
    defined F1 and is left out rather than counted as 0; the report covers the same classes so
    its "macro avg" row equals ``f1``. ``per_class`` still lists such a class, with zeros and
    support 0. Undefined ratios are 0.0 (``zero_division=0``); MCC is 0.0 when only one class
    occurs.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predicted ones")
    if not gold:
        raise ValueError("no examples to evaluate")
    known = set(label_names)
    for what, labels in (("gold", gold), ("predicted", pred)):
        unknown = set(labels) - known
        if unknown:
            raise ValueError(f"{what} labels {sorted(unknown)} not in label_names {label_names}")
    gold, pred = list(gold), list(pred)
    present = [name for name in label_names if name in set(gold) | set(pred)]

    with warnings.catch_warnings():
        # One class only: sklearn warns (confusion-matrix shape, undefined MCC) and returns 0.0.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        accuracy = sklearn.metrics.accuracy_score(gold, pred)
        f1 = sklearn.metrics.f1_score(gold, pred, average="macro", zero_division=0)
        mcc = sklearn.metrics.matthews_corrcoef(gold, pred)
        p, r, f, s = sklearn.metrics.precision_recall_fscore_support(
            gold, pred, labels=label_names, zero_division=0
        )
        report = sklearn.metrics.classification_report(
            gold, pred, labels=present, digits=4, zero_division=0
        )
    per_class = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float(accuracy),
        "f1": float(f1),
        "mcc": float(mcc),
        "per_class": per_class,
        "report": report,
        "num_examples": len(gold),
    }


# ---------------------------------------------------------------------------------------------
# Evaluators: run a predict function over batches, place predictions, score
# ---------------------------------------------------------------------------------------------


def _rows(batch: Batch, pred: np.ndarray, num_examples: int) -> Iterable[tuple[int, int]]:
    """Yields (row, example index) for the real rows of a batch; padding rows (-1) are skipped."""
    example_index = np.asarray(batch["example_index"])
    if example_index.shape != (pred.shape[0],):
        raise ValueError(
            f"example_index has shape {example_index.shape}, predictions {pred.shape}"
        )
    for row, ex in enumerate(example_index.tolist()):
        if ex == -1:  # padding row of the last batch: must not count
            continue
        if not 0 <= ex < num_examples:
            raise ValueError(f"example_index {ex} out of range for {num_examples} examples")
        yield row, ex


def _check_ids(ids: np.ndarray, num_labels: int) -> None:
    # The head has exactly len(id2label) outputs, so an id outside it is a wiring bug upstream.
    if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
        raise ValueError(f"predicted ids {np.unique(ids).tolist()} outside [0, {num_labels})")


def _check_all_seen(seen: np.ndarray) -> None:
    # An example dropped by the pipeline would silently inflate (or deflate) every figure.
    missing = np.flatnonzero(seen == 0)
    if missing.size:
        raise ValueError(
            f"{missing.size} of {seen.size} examples got no prediction "
            f"(first: {missing[:10].tolist()})"
        )


def _mark_seen(seen: np.ndarray, ex: int) -> None:
    if seen[ex]:
        raise ValueError(f"example {ex} appears more than once in the evaluation batches")
    seen[ex] = 1


class TokenEvaluator:
    """Scores a token-classification model on one split with :func:`token_metrics`."""

    metrics = staticmethod(token_metrics)
    missing = _OUTSIDE  # the tag of a word that got no prediction (cut off by max_length)

    def __init__(self, examples: Sequence[Any], id2label: Sequence[str]):
        """``examples`` expose ``.tags`` (one tag string per word); ``id2label[i]`` names id i."""
        self.examples = examples
        self.id2label = list(id2label)
        self.gold = [list(ex.tags) for ex in examples]

    def predict(self, predict_fn: PredictFn, batches: Iterable[Batch]) -> list[list[str]]:
        """Per-example predicted tags, one per word; words that got no prediction are ``O``."""
        return self._to_tags(self._predict_ids(predict_fn, batches))

    def run(self, predict_fn: PredictFn, batches: Iterable[Batch]) -> dict:
        """Predicts every example once; returns :func:`token_metrics` plus ``truncated_words``.

        ``truncated_words`` counts the words that had no position inside max_length and so
        were scored as ``O``. For predictions and metrics from one pass, call :meth:`predict`
        and then ``token_metrics(evaluator.gold, predictions)``.
        """
        pred_ids = self._predict_ids(predict_fn, batches)
        metrics = self.metrics(self.gold, self._to_tags(pred_ids))
        metrics["truncated_words"] = int(sum((ids < 0).sum() for ids in pred_ids))
        return metrics

    def _predict_ids(self, predict_fn: PredictFn, batches: Iterable[Batch]) -> list[np.ndarray]:
        # One id array per example, -1 where a word got no prediction (truncated).
        num_labels = len(self.id2label)
        pred_ids = [np.full(len(g), -1, np.int64) for g in self.gold]
        seen = np.zeros(len(self.gold), np.int8)
        for batch in batches:
            pred = np.asarray(predict_fn(batch))  # also pulls a jax array to the host
            word_index = np.asarray(batch["word_index"])
            if pred.shape != word_index.shape:
                raise ValueError(f"pred_ids shape {pred.shape} != word_index {word_index.shape}")
            for row, ex in _rows(batch, pred, len(self.gold)):
                _mark_seen(seen, ex)
                (positions,) = np.nonzero(word_index[row] >= 0)  # first subword of each word
                words = word_index[row, positions]
                ids = pred[row, positions]
                if words.size and words.max() >= len(self.gold[ex]):
                    raise ValueError(
                        f"example {ex}: word_index {int(words.max())} but only "
                        f"{len(self.gold[ex])} words"
                    )
                if np.unique(words).size != words.size:
                    raise ValueError(f"example {ex}: a word has more than one first subword")
                _check_ids(ids, num_labels)
                pred_ids[ex][words] = ids
        _check_all_seen(seen)
        return pred_ids

    def _to_tags(self, pred_ids: list[np.ndarray]) -> list[list[str]]:
        return [
            [self.id2label[i] if i >= 0 else self.missing for i in ids.tolist()] for ids in pred_ids
        ]


def tag_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Word accuracy, macro F1 over the gold tags and per-tag scores, for tag sets without
    entities (POS): ``accuracy``, ``f1``, ``per_tag`` (``{tag: {precision, recall, f1,
    support}}``), ``report`` and ``num_examples``. A word with no prediction counts as wrong."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tags differ in number")
    flat_gold = [t for g in gold for t in g]
    flat_pred = [t for p in pred for t in p]
    tags = sorted(set(flat_gold))
    if not flat_gold:
        return {"accuracy": 1.0, "f1": 1.0, "per_tag": {}, "report": "no words\n", "num_examples": len(gold)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        table = sklearn.metrics.classification_report(flat_gold, flat_pred, labels=tags, output_dict=True,
                                                      zero_division=0)
        report = sklearn.metrics.classification_report(flat_gold, flat_pred, labels=tags, digits=4, zero_division=0)
    return {
        "accuracy": float(np.mean([g == p for g, p in zip(flat_gold, flat_pred)])),
        "f1": float(table["macro avg"]["f1-score"]),
        "per_tag": {tag: {"precision": float(table[tag]["precision"]), "recall": float(table[tag]["recall"]),
                          "f1": float(table[tag]["f1-score"]), "support": int(table[tag]["support"])} for tag in tags},
        "report": report,
        "num_examples": len(gold),
    }


class TagEvaluator(TokenEvaluator):
    """Scores a tagger whose tags have no entity structure (POS) with :func:`tag_metrics`."""

    metrics = staticmethod(tag_metrics)
    missing = ""  # no tag: a word cut off by max_length counts as wrong


class SequenceEvaluator:
    """Scores a sequence-classification model on one split with :func:`sequence_metrics`."""

    def __init__(self, examples: Sequence[Any], id2label: Sequence[str]):
        """``examples`` expose ``.label`` (a class name); ``id2label[i]`` names class id i."""
        self.examples = examples
        self.id2label = list(id2label)
        self.gold = [ex.label for ex in examples]

    def predict(self, predict_fn: PredictFn, batches: Iterable[Batch]) -> list[str]:
        """Per-example predicted class names, in split order."""
        num_labels = len(self.id2label)
        pred_ids = np.full(len(self.gold), -1, np.int64)
        seen = np.zeros(len(self.gold), np.int8)
        for batch in batches:
            pred = np.asarray(predict_fn(batch))  # also pulls a jax array to the host
            if pred.ndim != 1:
                raise ValueError(f"pred_ids must have shape [B], got {pred.shape}")
            for row, ex in _rows(batch, pred, len(self.gold)):
                _mark_seen(seen, ex)
                pred_ids[ex] = pred[row]
        _check_all_seen(seen)
        _check_ids(pred_ids, num_labels)
        return [self.id2label[i] for i in pred_ids.tolist()]

    def run(self, predict_fn: PredictFn, batches: Iterable[Batch]) -> dict:
        """Predicts every example once and returns :func:`sequence_metrics`."""
        return sequence_metrics(self.gold, self.predict(predict_fn, batches), self.id2label)


class CausalLMEvaluator:
    """Scores a causal LM on one split: :func:`lm_metrics` from per-row NLL sums, each row once;
    with prompt/completion pairs and a ``completions_fn``, also ``exact_match``."""

    def __init__(self, num_rows: int, pairs: Sequence[tuple[str, str]] | None = None,
                 completions_fn: CompletionsFn | None = None):
        """``num_rows``: the split's encoded rows (packed blocks, or one a pair); ``pairs``: the
        (prompt, completion) of each row, for prompt/completion data."""
        self.num_rows = num_rows
        self.pairs = list(pairs) if pairs is not None else None
        self.completions_fn = completions_fn

    def run(self, nll_fn: NllFn, batches: Iterable[Batch]) -> dict:
        nll_sum, num_tokens = 0.0, 0
        seen = np.zeros(self.num_rows, np.int8)
        for batch in batches:
            sums, counts = (np.asarray(x) for x in nll_fn(batch))
            for row, ex in _rows(batch, sums, self.num_rows):
                _mark_seen(seen, ex)
                nll_sum += float(sums[row])  # summed in float64 on the host: no float32 drift
                num_tokens += int(counts[row])
        _check_all_seen(seen)
        metrics = lm_metrics(nll_sum, num_tokens)
        metrics["num_examples"] = self.num_rows
        if self.pairs is not None and self.completions_fn is not None:
            metrics["exact_match"] = exact_match([c for _, c in self.pairs],
                                                 self.completions_fn([p for p, _ in self.pairs]))
        return metrics


def lm_metrics(nll_sum: float, num_tokens: int) -> dict:
    """``loss`` (mean NLL a token, nats), ``perplexity`` (exp of it) and ``tokens`` (how many
    were scored)."""
    if num_tokens <= 0:
        raise ValueError("no labelled tokens to evaluate")
    loss = nll_sum / num_tokens
    return {"loss": float(loss), "perplexity": float(np.exp(loss)), "tokens": int(num_tokens)}


def exact_match(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """The fraction of completions equal to the gold one, surrounding whitespace aside."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} prompts but {len(predicted)} completions")
    return float(np.mean([g.strip() == p.strip() for g, p in zip(gold, predicted)])) if gold else 0.0


# ---------------------------------------------------------------------------------------------
# report.txt
# ---------------------------------------------------------------------------------------------


def token_summary(metrics: dict) -> list[str]:
    lines = [
        "entity precision / recall / F1 (seqeval strict, IOB2): "
        f"{metrics['precision']:.4f} / {metrics['recall']:.4f} / {metrics['f1']:.4f}",
        f"lenient entity F1 (conlleval-style, seqeval default mode): {metrics['lenient_f1']:.4f}",
        f"token accuracy (over words): {metrics['accuracy']:.4f}",
    ]
    if "truncated_words" in metrics:
        lines.append(f"words beyond max_length (scored as O): {metrics['truncated_words']}")
    return lines + ["per-type report (seqeval strict, IOB2):"]


def tag_summary(metrics: dict) -> list[str]:
    lines = [f"tag accuracy (over words): {metrics['accuracy']:.4f}", f"macro F1 over tags: {metrics['f1']:.4f}"]
    if "truncated_words" in metrics:
        lines.append(f"words beyond max_length (scored as wrong): {metrics['truncated_words']}")
    return lines + ["per-tag report:"]


def sequence_summary(metrics: dict) -> list[str]:
    return [
        f"accuracy: {metrics['accuracy']:.4f}",
        f"macro F1: {metrics['f1']:.4f}",
        f"Matthews correlation: {metrics['mcc']:.4f}",
        "per-class report:",
    ]


def lm_summary(metrics: dict) -> list[str]:
    lines = [f"loss (mean NLL a token, nats): {metrics['loss']:.4f} over {metrics['tokens']} tokens",
             f"perplexity: {metrics['perplexity']:.4f}"]
    if "exact_match" in metrics:
        lines.append(f"exact match of the completions: {metrics['exact_match']:.4f}")
    return lines


def format_report(name: str, metrics: dict, summary: Callable[[dict], list[str]]) -> str:
    """The report.txt section for one split: the task's headline figures (``summary``, one of the
    above), then the per-class report when there is one."""
    lines = [f"== {name} ==", f"examples: {metrics['num_examples']}", *summary(metrics)]
    text = "\n".join(lines) + "\n"
    if metrics.get("report"):
        text += "\n" + metrics["report"].rstrip("\n") + "\n"
    return text
