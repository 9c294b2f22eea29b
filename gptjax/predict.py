"""--mode=predict: a trained model on raw text, one input line at a time, as JSON Lines.

Each input line is one sentence or document. Token tasks split it into words by one rule,
WORD_PATTERN: a number with decimal or thousands separators is a word ("7.8", "1,000"), a run of
letters, digits and underscores is a word, and so is every other non-space character on its own
("don't" -> don ' t, "U.S." -> U . S ., an emoji with a skin tone -> two). Control and format
characters (Unicode Cc, Cf) separate words and are dropped. Offsets count characters (code points)
of the line as decoded, so `line[start:end]` is the word. Sequence tasks classify the line as it is.

One JSON object per input line, in input order:

  token:    {"line", "text", "words", "offsets": [[start, end], ...], "tags",
             "entities": [{"text", "type", "start", "end"}], "truncated"}
  sequence: {"line", "text", "label", "probabilities": {label: p}, "truncated"}

Entities are the spans seqeval's strict IOB2 mode finds (what the headline entity F1 counts): a
B-X and the I-X that follow it; an I-X that does not continue an X is no entity. They are left out
when the labels are not IOB2 (POS tags). A line longer than data.max_length tokens is cut there and
flagged `truncated`; its words beyond get the tag O, as evaluation scores them. An empty (or blank)
line gives empty words and entities, or a null label. Bytes that are not UTF-8 are replaced (U+FFFD)
with a warning naming the line.

Lines go through the pipeline evaluation uses (gptjax/data/encode.py, bucketed batches of
train.eval_batch_size, the jitted predict step), a chunk of lines at a time, so any input size
streams through a few compiled shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import jax
import numpy as np
from seqeval.scheme import IOB2, Entities

from gptjax import metrics, sharding, workdir as wd
from gptjax.data.batching import buckets_for, epoch_batches
from gptjax.data.encode import EncodedSplit, encode_sequence_split, encode_token_split, pad_token_id
from gptjax.data.examples import SequenceExample, TokenExample
from gptjax.data.labels import LabelVocab
from gptjax.errors import ConfigError

log = logging.getLogger("gptjax")

WORD_PATTERN = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]")
CHUNK_BATCHES = 16  # lines are read and predicted this many eval batches at a time
_MAX_WARNINGS = 10


# ---------------------------------------------------------------------------------------------
# Text


def split_words(line: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word of the line, by WORD_PATTERN; see the module docstring."""
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(line)
            if not all(unicodedata.category(c) in ("Cc", "Cf") for c in m.group())]


def read_lines(stream: BinaryIO, name: str = "<stdin>") -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a byte stream, split at \\n (a \\r before it dropped),
    decoded as UTF-8; invalid bytes become U+FFFD with a warning."""
    bad = 0
    for number, raw in enumerate(stream, 1):
        raw = raw.rstrip(b"\n").removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            text = raw.decode("utf-8", errors="replace")
            bad += 1
            if bad <= _MAX_WARNINGS:
                log.warning("%s, line %d: not valid UTF-8 (byte %r at offset %d); replaced by U+FFFD",
                            name, number, raw[e.start:e.start + 1], e.start)
        yield number, text
    if bad > _MAX_WARNINGS:
        log.warning("%s: %d lines in all had bytes that are not UTF-8", name, bad)


def is_iob2(labels: Iterable[str]) -> bool:
    return all(label == "O" or (label[:2] in ("B-", "I-") and len(label) > 2) for label in labels)


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, end word) of each entity, as seqeval's strict IOB2 mode finds them."""
    return [(e.tag, e.start, e.end) for e in Entities([list(tags)], IOB2, suffix=False).entities[0]]


# ---------------------------------------------------------------------------------------------
# The model


@dataclasses.dataclass
class Predictor:
    """A trained model (gptjax/artifact.py's Trained) with what it needs to read text. What it
    writes for a line is its task's (gptjax/tasks.py: Task.prediction names one of OUTPUTS)."""

    trained: Any

    def __post_init__(self):
        from gptjax.steps import make_predict_step

        t = self.trained
        self.task, self.labels, self.tokenizer, self.steps = t.task, t.labels, t.tokenizer, t.steps
        if self.task.prediction is None:
            raise ConfigError(f"a Predictor does not apply to a {self.task.name} model: it writes text "
                              "(--mode=predict and --mode=generate continue each line with gptjax/text_generation.py)")
        self.max_length = t.config.data.max_length
        self.buckets = buckets_for(t.config.data)
        self.batch_size = t.config.train.eval_batch_size
        self.pad_id = pad_token_id(self.tokenizer)
        self.vocab = LabelVocab(self.labels)
        self.num_truncated = 0  # lines cut at max_length so far
        # Sequence tasks also want the softmax beside the class ids (steps.predict, evaluation's).
        self.probabilities_step = make_predict_step(self.steps.graphdef, self.steps.partition, probabilities=True)

    def run(self, batch, probabilities: bool = False):
        s = self.steps
        batch = sharding.put_batch(batch, s.mesh)
        if not probabilities:
            return jax.device_get(s.predict(batch))
        with jax.set_mesh(s.mesh):
            return jax.device_get(self.probabilities_step(s.params, batch, s.frozen))

    def predict(self, lines: list[str], numbers: list[int] | None = None) -> list[dict]:
        """One output object per line (see the module docstring)."""
        return OUTPUTS[self.task.prediction](self, lines, numbers or list(range(1, len(lines) + 1)))

    def truncate(self, encoded: EncodedSplit, numbers: list[int]) -> tuple[EncodedSplit, list[bool]]:
        """Cuts examples to max_length as encoding for training does, but knowing which were cut."""
        cut = [len(ids) > self.max_length for ids in encoded.input_ids]
        for n, flag in zip(numbers, cut):
            if flag:
                self.num_truncated += 1
                if self.num_truncated <= _MAX_WARNINGS:
                    log.warning("line %d: longer than data.max_length=%d tokens; cut there (its output says "
                                "truncated)", n, self.max_length)
        trim = lambda arrays: None if arrays is None else [a[: self.max_length] for a in arrays]  # noqa: E731
        labels = trim(encoded.labels) if encoded.per_token else encoded.labels
        return EncodedSplit(encoded.per_token, trim(encoded.input_ids), labels, trim(encoded.word_index),
                                 sum(cut), encoded.examples), cut

    def batches(self, encoded):
        return epoch_batches(encoded, self.batch_size, buckets=self.buckets, pad_id=self.pad_id)

    def summary(self, count: int) -> str:
        return f"predicted {count} lines; {self.num_truncated} longer than data.max_length={self.max_length} tokens were cut"

    def predict_stream(self, lines: Iterable[tuple[int, str]]) -> Iterator[dict]:
        """Output objects for (number, text) lines, predicted a chunk at a time."""
        return in_chunks(lines, self.batch_size * CHUNK_BATCHES, self.predict)


def in_chunks(lines: Iterable[tuple[int, str]], size: int, fn) -> Iterator[dict]:
    """fn(texts, numbers)'s output objects for (number, text) lines, `size` lines at a time."""
    chunk: list[tuple[int, str]] = []
    for item in lines:
        chunk.append(item)
        if len(chunk) >= size:
            yield from fn([t for _, t in chunk], [n for n, _ in chunk])
            chunk = []
    if chunk:
        yield from fn([t for _, t in chunk], [n for n, _ in chunk])


def predict_tags(predictor: Predictor, lines: list[str], numbers: list[int]) -> list[dict]:
    """A token task's output: words, offsets, tags and entities for each line."""
    p = predictor
    words = [split_words(line) for line in lines]
    kept = [i for i, w in enumerate(words) if w]
    filler = "O" if "O" in p.vocab.label2id else p.labels[0]  # encoding wants some gold tag
    examples = [TokenExample(tuple(w for w, _, _ in words[i]), (filler,) * len(words[i])) for i in kept]
    encoded = encode_token_split(examples, p.tokenizer, p.vocab, max_length=2**62)
    encoded, cut = p.truncate(encoded, [numbers[i] for i in kept])
    tags = metrics.TokenEvaluator(examples, p.labels).predict(p.run, p.batches(encoded)) if kept else []
    out = [{"line": n, "text": line, "words": [], "offsets": [], "tags": [], "truncated": False}
           for n, line in zip(numbers, lines)]
    iob2 = is_iob2(p.labels)
    for k, i in enumerate(kept):
        line, spans = lines[i], words[i]
        record = out[i]
        record.update(words=[w for w, _, _ in spans], offsets=[[s, e] for _, s, e in spans], tags=tags[k],
                      truncated=cut[k])
        if iob2:
            record["entities"] = [
                {"text": line[spans[a][1]:spans[b - 1][2]], "type": kind, "start": spans[a][1], "end": spans[b - 1][2]}
                for kind, a, b in entity_spans(tags[k])
            ]
    if iob2:
        for record in out:
            record.setdefault("entities", [])
    return out


def predict_label(predictor: Predictor, lines: list[str], numbers: list[int]) -> list[dict]:
    """A sequence task's output: each line's class and the probabilities of all of them."""
    p = predictor
    kept = [i for i, line in enumerate(lines) if line.strip()]
    examples = [SequenceExample(lines[i], p.labels[0]) for i in kept]
    encoded = encode_sequence_split(examples, p.tokenizer, p.vocab, max_length=2**62)
    encoded, cut = p.truncate(encoded, [numbers[i] for i in kept])
    ids = np.full(len(kept), -1, np.int64)
    probs = np.zeros((len(kept), len(p.labels)), np.float32)
    for batch in p.batches(encoded) if kept else []:
        batch_ids, batch_probs = p.run(batch, probabilities=True)
        rows = batch["example_index"] >= 0
        ids[batch["example_index"][rows]] = batch_ids[rows]
        probs[batch["example_index"][rows]] = batch_probs[rows]
    out = [{"line": n, "text": line, "label": None, "probabilities": None, "truncated": False}
           for n, line in zip(numbers, lines)]
    for k, i in enumerate(kept):
        out[i].update(label=p.labels[ids[k]], truncated=cut[k],
                      probabilities={name: float(q) for name, q in zip(p.labels, probs[k])})
    return out


# What --mode=predict writes a line, by a task's Task.prediction.
OUTPUTS = {"tags": predict_tags, "label": predict_label}


def run(predictor, input_path: str | None = None, output_path: str | None = None, reads=()) -> int:
    """Reads --input (or standard input), writes JSON Lines to --output (or standard output);
    returns the number of lines. `predictor`: a Predictor, or anything with predict_stream and
    summary (text_generation.TextGenerator). `reads`: what else the command reads (the model),
    where the output may not land either."""
    if input_path and not Path(input_path).is_file():
        raise ConfigError(f"--input={input_path}: no such file")
    wd.check_output(output_path, reads=(input_path, *reads))
    source = open(input_path, "rb") if input_path else sys.stdin.buffer
    # The output is written beside its final name and renamed at the end: an existing file is
    # never emptied, and a stopped run (an error, Ctrl-C, SIGTERM) leaves no half file.
    tmp = os.path.join(os.path.dirname(output_path) or ".", f".{os.path.basename(output_path)}.tmp-{os.getpid()}") \
        if output_path else None
    count = 0
    try:
        sink = open(tmp, "wb") if tmp else sys.stdout.buffer
        for record in predictor.predict_stream(read_lines(source, input_path or "<stdin>")):
            sink.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
            wd.check_not_stopped()
        sink.flush()
        if tmp:
            sink.close()
            os.replace(tmp, output_path)
    except OSError as e:
        if e.filename not in (None, tmp, output_path):
            raise
        where = f"--output={output_path}" if output_path else "standard output"
        raise wd.WorkdirError(f"{where}: could not write ({e.strerror or e})") from None
    finally:
        if input_path:
            source.close()
        if tmp and os.path.exists(tmp):
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                sink.close()
            os.unlink(tmp)
    log.info(predictor.summary(count))
    return count
