"""What the readers make: one example a sentence, text, document or prompt/completion pair.

Each keeps where it came from (file and line, or dataset split and row), so later checks can
name them; that provenance is not part of equality nor of content(), which the data fingerprint
a run records hashes.

Causal-LM examples, one kind a run:

- TextExample, one document: a line of a plain text file (as Hugging Face's `text` loader reads
  them), a JSONL object with "text", or a row of a hub dataset's text column.
- CompletionExample: a JSONL object (or hub row) with "prompt" and "completion"; the loss counts
  the completion's tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenExample:
    """One pre-split sentence with one tag per word."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    # Provenance, kept so later checks can name the file and line; not part of equality.
    source: str = field(default="", compare=False, repr=False)  # file path or "dataset[split]"
    line: int = field(default=0, compare=False, repr=False)  # 1-based line (row for hub data)
    line_step: int = field(default=0, compare=False, repr=False)  # 1 for CoNLL: a token a line
    unit: str = field(default="line", compare=False, repr=False)  # "line" or "row"

    def where(self, word: int = 0) -> str:
        """Where word `word` of this example came from, e.g. 'data/dev.conll, line 57'."""
        return f"{self.source}, {self.unit} {self.line + self.line_step * word}"

    def content(self) -> tuple:
        """What the example says, for the data fingerprint a run records."""
        return self.tokens, self.tags


@dataclass(frozen=True)
class SequenceExample:
    """One text with one label."""

    text: str
    label: str
    source: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)
    unit: str = field(default="line", compare=False, repr=False)
    # ClassLabel names of a hub dataset: the label vocabulary keeps their order.
    classes: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def where(self) -> str:
        """Where this example came from, e.g. 'data/dev.csv, line 12'."""
        return f"{self.source}, {self.unit} {self.line}"

    def content(self) -> tuple:
        """What the example says, for the data fingerprint a run records."""
        return self.text, self.label


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


def word_texts(examples: Iterable[TokenExample]) -> list[str]:
    """Space-joined sentences, e.g. to train a tokenizer on."""
    return [" ".join(ex.tokens) for ex in examples]


def lm_texts(examples: Sequence) -> list[str]:
    """What a tokenizer trained on the fly learns from."""
    return [ex.text if isinstance(ex, TextExample) else ex.prompt + ex.completion for ex in examples]
