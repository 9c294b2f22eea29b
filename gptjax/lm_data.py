"""Causal-LM data: documents packed into blocks, and prompt/completion pairs.

Two kinds of example, one kind a run:

- TextExample, one document: a line of a plain text file (as Hugging Face's `text` loader reads
  them), a JSONL object with "text", or a row of a hub dataset's text column. Blank lines and
  rows are skipped (wikitext's separators), as run_clm's line-by-line mode skips them.
- CompletionExample: a JSONL object (or hub row) with "prompt" and "completion"; the loss counts
  the completion's tokens only.

Labels are the next token, shifted here in the data, so the train step's masked cross-entropy of
logits against labels is the same for every task: position t of a row is labelled with token t+1.

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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gptjax.data import IGNORE_INDEX, JSONL_EXTS, EncodedSplit, _json_objects, _read_lines, _warn_truncated
from gptjax.errors import DataError

TEXT_EXTS = (".txt",)
EXTENSIONS = TEXT_EXTS + JSONL_EXTS


@dataclass(frozen=True)
class _Located:
    """Where an example came from, so errors can name the file and line; not part of equality."""

    source: str = field(default="", compare=False, repr=False, kw_only=True)
    line: int = field(default=0, compare=False, repr=False, kw_only=True)
    unit: str = field(default="line", compare=False, repr=False, kw_only=True)  # "line" or "row"

    def where(self) -> str:
        return f"{self.source}, {self.unit} {self.line}"


@dataclass(frozen=True)
class TextExample(_Located):
    """One document."""

    text: str

    def content(self) -> tuple:
        """What the example says, for the data fingerprint a run records."""
        return (self.text,)


@dataclass(frozen=True)
class CompletionExample(_Located):
    """A prompt and the completion the model should learn to write after it."""

    prompt: str
    completion: str

    def content(self) -> tuple:
        return self.prompt, self.completion


# ----------------------------------------------------------------------------- reading


def read_text_file(path: str) -> list[TextExample]:
    """One document a non-blank line."""
    examples = [TextExample(line, source=path, line=n) for n, line in enumerate(_read_lines(path), 1) if line.strip()]
    if not examples:
        raise DataError(f"{path}: no text found (empty split)")
    return examples


def _example(values: dict, where: str, source: str, line: int, text_column: str | None, unit: str = "line"):
    """A CompletionExample from prompt/completion, else a TextExample from the text column."""
    if text_column is None and "prompt" in values and "completion" in values:
        prompt, completion = values["prompt"], values["completion"]
        if not (isinstance(prompt, str) and prompt and isinstance(completion, str) and completion):
            raise DataError(f"{where}: 'prompt' and 'completion' must be non-empty strings")
        return CompletionExample(prompt, completion, source=source, line=line, unit=unit)
    key = text_column or "text"
    if key not in values:
        raise DataError(f"{where}: no {key!r} (nor 'prompt' and 'completion') (keys: {sorted(values)})")
    if not isinstance(values[key], str):
        raise DataError(f"{where}: {key!r} must be a string")
    return TextExample(values[key], source=source, line=line, unit=unit)


def read_lm_jsonl(path: str, text_column: str | None = None) -> list:
    """JSON Lines of {"text": ...} documents or {"prompt": ..., "completion": ...} pairs."""
    examples = []
    for n, obj in _json_objects(path):
        example = _example(obj, f"{path}, line {n}", path, n, text_column)
        if isinstance(example, TextExample) and not example.text.strip():
            continue
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples found (empty split)")
    return same_kind({path: examples})[path]


def read_lm_file(path: str, text_column: str | None = None) -> list:
    """A causal_lm split file: plain text (.txt) or JSON Lines (.jsonl, .json)."""
    if os.path.splitext(path)[1].lower() in JSONL_EXTS:
        return read_lm_jsonl(path, text_column)
    return read_text_file(path)


def lm_examples_from_hf(ds, source: str, *, text_column: str | None = None) -> list:
    """One hub split: prompt/completion columns, or a text column (blank rows skipped)."""
    columns = list(ds.column_names)
    if text_column is None and not {"prompt", "completion"} <= set(columns) and "text" not in columns:
        raise DataError(f"{source}: no 'text' column (nor 'prompt' and 'completion'); set data.text_column "
                        f"(columns: {columns})")
    keep = [c for c in ("prompt", "completion", text_column or "text") if c in columns]
    examples = []
    for row, values in enumerate(ds.select_columns(keep)):
        example = _example(values, f"{source}, row {row}", source, row, text_column, "row")
        if isinstance(example, TextExample) and not example.text.strip():
            continue
        examples.append(example)
    return examples


def same_kind(splits: dict[str, list]) -> dict[str, list]:
    """Refuses a mix of documents and prompt/completion pairs (they train differently)."""
    kinds = {type(ex) for examples in splits.values() for ex in examples}
    if len(kinds) > 1:
        first = next(ex for examples in splits.values() for ex in examples if isinstance(ex, CompletionExample))
        other = next(ex for examples in splits.values() for ex in examples if isinstance(ex, TextExample))
        raise DataError(f"{other.where()}: a text document, but {first.where()} is a prompt/completion pair; "
                        "a causal_lm run reads one kind")
    return splits


def texts(examples: Sequence) -> list[str]:
    """What a tokenizer trained on the fly learns from."""
    return [ex.text if isinstance(ex, TextExample) else ex.prompt + ex.completion for ex in examples]


# ----------------------------------------------------------------------------- encoding


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
