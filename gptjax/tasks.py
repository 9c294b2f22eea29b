"""A task is one entry here: its head, how its data is read, labelled, tokenised and scored, what
--mode=predict writes for it, and the class its export loads as. The registry is a leaf: it names
the data stages and the metrics it uses, and no mode; a mode looks up what it does for a task by
one of the task's fields (gptjax/predict.py: Task.prediction).

The rest of gptjax looks a task up by name (config.task, or the task run.json records) and uses
its fields; no other module asks which task it is. The loss is every task's masked cross-entropy
of the head's logits against the batch labels (gptjax/steps.py): a task defines it through its
labels, which for causal_lm are the next tokens (shifted in gptjax/data/encode.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from gptjax import metrics
from gptjax.config import base_config
from gptjax.data import encode, readers, synthetic
from gptjax.data.encode import EncodedSplit
from gptjax.data.examples import CompletionExample, lm_texts, word_texts
from gptjax.data.labels import LabelVocab, check_iob2, check_sequence_labels, check_token_labels, name_labels
from gptjax.errors import ConfigError

DataConfig = Any  # config.data (an ml_collections ConfigDict)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # config.task
    head: str  # gptjax.model's head
    primary_metric: str  # what best-model selection and early stopping follow
    higher_is_better: bool  # the primary metric's direction

    # Reading: local split files (train.EXT, validation.EXT or dev.EXT, test.EXT), hub datasets
    # (one datasets split at a time; None: its labels are hidden), data.source='synthetic'.
    extensions: tuple[str, ...]
    read_file: Callable[[str, DataConfig], list]
    read_hub: Callable[[Any, str, DataConfig], list | None]
    check: Callable[[dict, DataConfig], dict]  # splits with labels named and checked, before training
    synthetic: Callable[[int, Sequence[int], str], None] | None  # (seed, sizes, directory): writes split files

    # Labels: the vocabulary the training split gives (empty: no labels), and the check that every
    # split's labels are in it (by data.unknown_label's policy).
    vocab: Callable[[list], LabelVocab]
    check_labels: Callable[[dict, LabelVocab, str], dict]

    # Tokenising
    prefix_space: bool  # the tokenizer's add_prefix_space
    texts: Callable[[list], list[str]]  # what a tokenizer trained on the fly learns from
    encode: Callable[[list, Any, LabelVocab, DataConfig], EncodedSplit]  # (examples, tokenizer, vocab, config.data)
    per_token: bool  # a label a position ([B, T]) or one an example ([B])

    # Scoring: which of the steps' outputs its evaluator reads, the evaluator over one encoded
    # split (labels; a completions function or None), and report.txt's headline lines.
    scores_from: Callable[[Any], Callable]  # steps.Steps -> its predict (class ids) or nll (NLL sums)
    evaluator: Callable[[EncodedSplit, list[str], metrics.CompletionsFn | None], Any]
    summary: Callable[[dict], list[str]]

    # Using a trained model
    prediction: str | None  # what --mode=predict writes a line: "tags" or "label" (predict.OUTPUTS); None: text
    benchmark_labels: int  # classes of benchmark mode's random head (0: no classifier)
    outside_tag: bool = False  # its tags have an O, which data.unknown_label='map_to_o' may map unseen tags to

    @property
    def architecture(self) -> str:
        """The transformers class an export of this task loads as."""
        # Imported here, not at the top: the registry imports no model code.
        from gptjax.hf import ARCHITECTURES

        return ARCHITECTURES[self.head]

    def load_splits(self, source: str, data_config: DataConfig | None = None,
                    splits: Sequence[str] = readers.SPLITS) -> dict[str, list]:
        """{split: examples} of a local directory or a hub dataset, as this task reads them."""
        cfg = base_config().data if data_config is None else data_config
        return readers.load_splits(source, extensions=self.extensions, read_file=lambda path: self.read_file(path, cfg),
                                read_hub=lambda ds, where: self.read_hub(ds, where, cfg), hub_config=cfg.hub_config,
                                splits=splits)

    def improves(self, score: float, best: float | None) -> bool:
        return best is None or (score > best if self.higher_is_better else score < best)

    def format_report(self, name: str, scores: dict) -> str:
        return metrics.format_report(name, scores, self.summary)

    def check_config(self, config) -> None:
        """Refuses settings this task cannot train with, before any data is read."""
        from gptjax.hf import HEAD_MODULE  # as in `architecture`: the registry imports no model code

        if config.data.unknown_label == "map_to_o" and not self.outside_tag:
            raise ConfigError(f"data.unknown_label='map_to_o' does not apply to task={self.name!r}: its labels have no "
                              "O to map to; use data.unknown_label='error'")
        if config.train.freeze == "head_only" and self.head not in HEAD_MODULE:
            raise ConfigError(f"train.freeze='head_only' does not apply to task={self.name!r}: its head is the token "
                              "embedding (wte, tied), not a layer of its own; use train.freeze='top_k' or lora.rank")


# ---------------------------------------------------------------------------------------------
# The tasks' own pieces


def _named(splits: dict, cfg: DataConfig) -> dict:
    """Integer label ids named by data.label_names, if given."""
    return name_labels(splits, tuple(cfg.label_names)) if cfg.label_names else splits


def _checked_tags(splits: dict, cfg: DataConfig) -> dict:
    splits = _named(splits, cfg)
    check_iob2(splits)
    return splits


def _lm_evaluator(encoded: EncodedSplit, labels, completions_fn) -> metrics.CausalLMEvaluator:
    pairs = None
    if encoded.examples and isinstance(encoded.examples[0], CompletionExample):
        pairs = [(ex.prompt, ex.completion) for ex in encoded.examples]
    return metrics.CausalLMEvaluator(len(encoded), pairs, completions_fn)


def _write_ner_corpus(seed: int, sizes: Sequence[int], directory: str) -> None:
    synthetic.write_corpus(synthetic.make_ner_corpus(seed=seed, sizes=tuple(sizes)), directory)


TOKEN = Task(
    name="token", head="token_classification", primary_metric="f1", higher_is_better=True,  # strict IOB2 entity F1
    extensions=readers.CONLL_EXTS + readers.JSONL_EXTS,
    read_file=lambda path, cfg: readers.read_token_file(path, cfg.iob1_to_iob2),
    read_hub=lambda ds, where, cfg: readers.token_examples_from_hf(ds, where, iob1_to_iob2=cfg.iob1_to_iob2,
                                                                   label_column=cfg.label_column),
    check=_checked_tags, synthetic=_write_ner_corpus,
    vocab=LabelVocab.from_tags, check_labels=check_token_labels,
    prefix_space=True,  # words arrive pre-split, and GPT-2 encodes a word differently without a space
    texts=word_texts,
    encode=lambda examples, tokenizer, vocab, cfg: encode.encode_token_split(
        examples, tokenizer, vocab, cfg.max_length, cfg.label_all_subwords),
    per_token=True,
    scores_from=attrgetter("predict"),
    evaluator=lambda encoded, labels, completions_fn: metrics.TokenEvaluator(encoded.examples, labels),
    summary=metrics.token_summary,
    prediction="tags", benchmark_labels=9,  # CoNLL-2003's tags
    outside_tag=True,
)

# Word tags without entities (part of speech): read and tokenised as TOKEN's, scored by accuracy.
TAGGING = dataclasses.replace(
    TOKEN, name="tagging", primary_metric="accuracy", check=_named, synthetic=None,
    evaluator=lambda encoded, labels, completions_fn: metrics.TagEvaluator(encoded.examples, labels),
    summary=metrics.tag_summary, benchmark_labels=17, outside_tag=False,  # Universal Dependencies' UPOS tags
)

SEQUENCE = Task(
    # Macro F1: unlike accuracy, it does not reward predicting the majority class.
    name="sequence", head="sequence_classification", primary_metric="f1", higher_is_better=True,
    extensions=readers.JSONL_EXTS + readers.TABLE_EXTS,
    read_file=lambda path, cfg: readers.read_sequence_file(path, cfg.text_column, cfg.label_column or "label"),
    read_hub=lambda ds, where, cfg: readers.sequence_examples_from_hf(ds, where, text_column=cfg.text_column,
                                                                      label_column=cfg.label_column),
    check=_named, synthetic=synthetic.write_sentiment_corpus,
    vocab=LabelVocab.from_classes, check_labels=check_sequence_labels,
    prefix_space=True,
    texts=lambda examples: [ex.text for ex in examples],
    encode=lambda examples, tokenizer, vocab, cfg: encode.encode_sequence_split(examples, tokenizer, vocab, cfg.max_length),
    per_token=False,
    scores_from=attrgetter("predict"),
    evaluator=lambda encoded, labels, completions_fn: metrics.SequenceEvaluator(encoded.examples, labels),
    summary=metrics.sequence_summary,
    prediction="label", benchmark_labels=2,  # binary sentiment
)

CAUSAL_LM = Task(
    name="causal_lm", head="causal_lm", primary_metric="loss", higher_is_better=False,  # token-weighted NLL
    extensions=readers.LM_EXTS,  # .txt here is plain text, one document a line, not CoNLL
    read_file=lambda path, cfg: readers.read_lm_file(path, cfg.text_column),
    read_hub=lambda ds, where, cfg: readers.lm_examples_from_hf(ds, where, text_column=cfg.text_column),
    check=lambda splits, cfg: readers.same_kind(splits), synthetic=synthetic.write_lm_corpus,
    vocab=lambda examples: LabelVocab([]), check_labels=lambda splits, vocab, policy: splits,
    prefix_space=False,  # text keeps its own spacing, as GPT-2 was trained and generates
    texts=lm_texts,
    encode=lambda examples, tokenizer, vocab, cfg: encode.encode_lm_split(examples, tokenizer, cfg.max_length),
    per_token=True,
    scores_from=attrgetter("nll"),
    evaluator=_lm_evaluator,
    summary=metrics.lm_summary,
    prediction=None,  # it writes text: generation, not a label a line
    benchmark_labels=0,
)

TASKS = {task.name: task for task in (TOKEN, TAGGING, SEQUENCE, CAUSAL_LM)}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task={name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def architectures() -> list[str]:
    return [t.architecture for t in TASKS.values()]


def by_architecture(names, head: str | None = None) -> Task | None:
    """The task whose export class is among `names` (a config.json's architectures)."""
    return next((t for t in TASKS.values() if t.architecture in names and head in (None, t.head)), None)
