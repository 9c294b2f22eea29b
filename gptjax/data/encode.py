"""Encoding: a split's examples tokenised once, labels aligned to tokens, as an EncodedSplit that
batching reads.

Token tasks label the first subword of each word (and, with label_all_subwords, the rest);
sequence tasks label the example. For causal LM the labels are the next token, shifted here in
the data, so the train step's masked cross-entropy of logits against labels is the same for
every task: position t of a row is labelled with token t+1.

Packing (pack_documents): a split's documents, each followed by EOS and the first preceded by one,
form one stream x_0 .. x_N, which run_clm's group_texts concatenates the same way (GPT-2's EOS
between documents added). Block k holds inputs x[kL : kL+L] and labels x[kL+1 : kL+L+1]: the
blocks overlap by one token, so the last position of a block is labelled with the first token of
the next one and every token x_1 .. x_N is a label exactly once. The remainder forms a shorter
last block (bucketed and padded, not dropped as run_clm drops it), so evaluation counts every
token. Prompt/completion pairs (encode_completions) are one row each: inputs prompt + completion,
labels (prompt + completion + EOS)[1:], -100 where the label is a prompt token.

Tokenizers for causal_lm do not add a prefix space (gptjax/tasks.py), so the tokens of a prompt
followed by those of its completion are the tokens of the two texts, as generation will see them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gptjax.data.examples import CompletionExample, SequenceExample, TextExample, TokenExample
from gptjax.data.labels import IGNORE_INDEX, LabelVocab
from gptjax.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """A tokenised split: variable-length id arrays per example (or per packed block of text),
    ready for bucketing."""

    per_token: bool  # one label a position (token, causal_lm) or one an example (sequence)
    input_ids: list[np.ndarray]  # per example, int32 [L_i], 1 <= L_i <= max_length
    labels: list[np.ndarray] | np.ndarray  # per_token: per example int32 [L_i]; else int32 [N]
    word_index: list[np.ndarray] | None  # token task: per example int32 [L_i]; else None
    num_truncated: int  # examples longer than max_length, cut on the right
    examples: list  # the source examples, for word-level evaluation and predictions

    def __post_init__(self):
        self.lengths = np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.input_ids)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id when it has none (GPT-2 has no pad token)."""
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def _warn_truncated(num: int, total: int, max_length: int, examples: list) -> None:
    if num:
        source = getattr(examples[0], "source", "") if examples else ""
        logger.warning("%s: %d of %d examples were longer than max_length=%d tokens and were "
                       "truncated", source or "data", num, total, max_length)


def encode_token_split(examples: Sequence[TokenExample], tokenizer, vocab: LabelVocab,
                       max_length: int, label_all_subwords: bool = False) -> EncodedSplit:
    """Tokenise pre-split words GPT-2 style and align word labels to subwords."""
    ids_out, labels_out, words_out = [], [], []
    truncated = 0
    if examples:
        # A leading space on every word gives exactly what a GPT-2 tokenizer with
        # add_prefix_space=True yields for is_split_into_words=True, whatever the tokenizer's own
        # add_prefix_space setting (the byte-level pre-tokenizer never adds a second space).
        words = [[" " + w for w in ex.tokens] for ex in examples]
        enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False,
                        return_attention_mask=False)
        label2id = vocab.label2id
        for n, ex in enumerate(examples):
            try:
                first_ids = np.array([label2id[t] for t in ex.tags], dtype=np.int32)
            except KeyError:
                i = next(i for i, t in enumerate(ex.tags) if t not in label2id)
                raise DataError(f"{ex.where(i)}: label {ex.tags[i]!r} is not in the label "
                                f"vocabulary {vocab.names}") from None
            ids = np.asarray(enc["input_ids"][n], dtype=np.int32)
            wid = np.array([-1 if w is None else w for w in enc.word_ids(n)], dtype=np.int32)
            if len(ids) > max_length:
                truncated += 1
                ids, wid = ids[:max_length], wid[:max_length]
            first = (wid >= 0) & np.concatenate([[True], wid[1:] != wid[:-1]])
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            labels[first] = first_ids[wid[first]]
            if label_all_subwords:
                # Continuation subwords of a B-X word are inside the entity: they get I-X.
                cont_ids = np.array([label2id.get("I-" + t[2:], label2id[t]) if t.startswith("B-")
                                     else label2id[t] for t in ex.tags], dtype=np.int32)
                rest = (wid >= 0) & ~first
                labels[rest] = cont_ids[wid[rest]]
            word_index = np.where(first, wid, -1).astype(np.int32)
            ids_out.append(ids)
            labels_out.append(labels)
            words_out.append(word_index)
    _warn_truncated(truncated, len(examples), max_length, list(examples))
    return EncodedSplit(True, ids_out, labels_out, words_out, truncated, list(examples))


def encode_sequence_split(examples: Sequence[SequenceExample], tokenizer, vocab: LabelVocab,
                          max_length: int) -> EncodedSplit:
    """Tokenise texts (no special tokens) and map labels to ids."""
    ids_out, labels = [], np.zeros(len(examples), dtype=np.int32)
    truncated = 0
    if examples:
        enc = tokenizer([ex.text for ex in examples], add_special_tokens=False,
                        return_attention_mask=False)
        for n, ex in enumerate(examples):
            if ex.label not in vocab.label2id:
                raise DataError(f"{ex.where()}: label {ex.label!r} is not in the label "
                                f"vocabulary {vocab.names}")
            labels[n] = vocab.label2id[ex.label]
            ids = np.asarray(enc["input_ids"][n], dtype=np.int32)
            if len(ids) == 0:
                raise DataError(f"{ex.where()}: text tokenises to no tokens")
            if len(ids) > max_length:
                truncated += 1
                ids = ids[:max_length]
            ids_out.append(ids)
    _warn_truncated(truncated, len(examples), max_length, list(examples))
    return EncodedSplit(False, ids_out, labels, None, truncated, list(examples))


# ----------------------------------------------------------------------------- causal LM


def _token_ids(tokenizer, strings: list[str]) -> list[list[int]]:
    if not strings:
        return []
    return tokenizer(strings, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token, which causal_lm puts between documents")
    return tokenizer.eos_token_id


def pack_documents(examples: Sequence[TextExample], tokenizer, max_length: int) -> EncodedSplit:
    """Documents packed into blocks of max_length tokens (see the module docstring)."""
    eos = _eos(tokenizer)
    pieces = [[eos]]
    for ids in _token_ids(tokenizer, [ex.text for ex in examples]):
        pieces += [ids, [eos]]
    stream = np.concatenate([np.asarray(p, dtype=np.int32) for p in pieces])  # x_0 .. x_N
    inputs, labels = [], []
    for start in range(0, len(stream) - 1, max_length):
        targets = stream[start + 1:start + 1 + max_length]
        inputs.append(stream[start:start + len(targets)])
        labels.append(targets)
    return EncodedSplit(True, inputs, labels, None, 0, list(examples))


def encode_completions(examples: Sequence[CompletionExample], tokenizer, max_length: int) -> EncodedSplit:
    """One row a pair: the loss sees the completion and its EOS, never the prompt."""
    eos = _eos(tokenizer)
    prompts = _token_ids(tokenizer, [ex.prompt for ex in examples])
    completions = _token_ids(tokenizer, [ex.completion for ex in examples])
    inputs, labels, truncated = [], [], 0
    for ex, prompt, completion in zip(examples, prompts, completions):
        if not prompt or not completion:
            raise DataError(f"{ex.where()}: the {'prompt' if not prompt else 'completion'} tokenises to no tokens")
        sequence = np.asarray(prompt + completion + [eos], dtype=np.int32)
        target = sequence[1:].copy()
        target[:len(prompt) - 1] = IGNORE_INDEX  # labels that are prompt tokens
        ids = sequence[:-1]
        if len(ids) > max_length:
            truncated += 1
            ids, target = ids[:max_length], target[:max_length]
        inputs.append(ids)
        labels.append(target)
    _warn_truncated(truncated, len(examples), max_length, list(examples))
    return EncodedSplit(True, inputs, labels, None, truncated, list(examples))


def encode_lm_split(examples: Sequence, tokenizer, max_length: int) -> EncodedSplit:
    """Documents packed, or prompt/completion pairs one a row, by the split's kind."""
    if examples and isinstance(examples[0], CompletionExample):
        return encode_completions(examples, tokenizer, max_length)
    return pack_documents(examples, tokenizer, max_length)
