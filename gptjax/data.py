"""Input pipeline: sources, tokenisation, label alignment, bucketing and batching.

Host-side numpy only. jax is deliberately not imported here: the pipeline must never create
device arrays (that starves the accelerator); the train loop places each batch on the mesh.

The readers, label vocabularies and encoders here are per format; which of them a task uses is
its entry in gptjax/tasks.py. Flow: load_splits -> the task's label vocabulary (train) -> its
label check -> its encoder (tokenise once) -> epoch_batches (cheap, deterministic per (seed,
epoch), restartable at a batch offset). Causal-LM text is read and packed by gptjax/lm_data.py.

Batch format (a dict of numpy arrays; B is always the batch size, T a bucket length):
  input_ids      int32 [B, T]  padded on the right with the pad id (EOS when there is none)
  attention_mask int32 [B, T]  1 real token, 0 padding (padding rows are all 0)
  labels         int32 [B, T]  one label a position (token and causal_lm tasks), -100 where
                               ignored; [B] for a sequence task; padding rows are -100 everywhere
  example_index  int32 [B]     index into the split's example list; -1 marks a padding row
  word_index     int32 [B, T]  token task only: w at the first subword of word w, else -1
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gptjax.errors import DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions the loss and metrics skip
DEFAULT_BUCKETS = (32, 64, 128, 256, 512)
SPLITS = ("train", "validation", "test")
# File stems accepted for each split of a local directory.
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
CONLL_EXTS = (".txt", ".conll", ".iob")
JSONL_EXTS = (".jsonl", ".json")
TABLE_EXTS = (".csv", ".tsv")
HUB_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}
TEXT_COLUMNS = ("text", "sentence")  # auto-detected text column names, in this order
TAG_COLUMNS = ("tags", "ner_tags")  # auto-detected tag column names, in this order
UNKNOWN_LABEL_POLICIES = ("error", "map_to_o")



# ----------------------------------------------------------------------------- examples


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


# ----------------------------------------------------------------------------- readers


def _read_lines(path: str) -> list[str]:
    """The file's lines, decoded strictly as UTF-8 (a BOM is dropped)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: not valid UTF-8 (byte offset {e.start}, column {column}, "
            f"byte {data[e.start:e.start + 1]!r}); re-encode the file as UTF-8"
        ) from None
    # split("\n") rather than splitlines(): the latter also breaks on \x0b, \u2028 etc., which
    # would shift line numbers and split tokens.
    return [line.rstrip("\r") for line in text.split("\n")]


def convert_iob1_to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 -> IOB2: an I-X that does not continue an X entity becomes B-X."""
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return tuple(out)


def read_conll(path: str, iob1_to_iob2: bool = False) -> list[TokenExample]:
    """Read a CoNLL column file: token first, tag last, blank lines and -DOCSTART- end sentences."""
    examples: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    ncols = None

    def flush():
        if tokens:
            t = convert_iob1_to_iob2(tags) if iob1_to_iob2 else tuple(tags)
            examples.append(TokenExample(tuple(tokens), t, path, start, 1))
            tokens.clear()
            tags.clear()

    for n, raw in enumerate(_read_lines(path), 1):
        cols = raw.split()
        if not cols or cols[0] == "-DOCSTART-":
            flush()
            continue
        if ncols is None:
            if len(cols) < 2:
                raise DataError(
                    f"{path}, line {n}: expected at least 2 whitespace-separated columns "
                    f"(token ... tag), found 1: {raw!r}"
                )
            ncols = len(cols)
        elif len(cols) != ncols:
            raise DataError(
                f"{path}, line {n}: expected {ncols} columns like the file's first token line, "
                f"found {len(cols)}: {raw!r}"
            )
        if not tokens:
            start = n
        tokens.append(cols[0])
        tags.append(cols[-1])
    flush()
    if not examples:
        raise DataError(f"{path}: no sentences found (empty split)")
    return examples


def _json_objects(path: str) -> Iterable[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    for n, raw in enumerate(_read_lines(path), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno}); "
                "expected one JSON object per line (JSON Lines)"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def read_token_jsonl(path: str, iob1_to_iob2: bool = False) -> list[TokenExample]:
    """Read token examples from JSON Lines: {"tokens": [...], "tags": [...]} ("ner_tags" too)."""
    examples = []
    for n, obj in _json_objects(path):
        tag_key = next((k for k in TAG_COLUMNS if k in obj), None)
        if "tokens" not in obj or tag_key is None:
            missing = "tokens" if "tokens" not in obj else "tags"
            raise DataError(f"{path}, line {n}: missing key {missing!r} (keys: {sorted(obj)})")
        tokens, tags = obj["tokens"], obj[tag_key]
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"{path}, line {n}: 'tokens' and '{tag_key}' must be lists")
        if len(tokens) != len(tags):
            raise DataError(
                f"{path}, line {n}: {len(tokens)} tokens but {len(tags)} tags; "
                "expected one tag per token"
            )
        if not tokens:
            raise DataError(f"{path}, line {n}: empty 'tokens' list")
        if not all(isinstance(t, str) and t.strip() for t in tokens):
            raise DataError(f"{path}, line {n}: every token must be a non-empty string")
        tags = tuple(str(t) for t in tags)
        if iob1_to_iob2:
            tags = convert_iob1_to_iob2(tags)
        examples.append(TokenExample(tuple(tokens), tags, path, n, 0))
    if not examples:
        raise DataError(f"{path}: no examples found (empty split)")
    return examples


def _label_str(value, where: str) -> str:
    """A label as a string: strings as they are, ints in decimal."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: label must be a non-empty string or an int, got {value!r}")


def _pick_text_column(columns: Sequence[str], text_column: str | None, where: str) -> str:
    """The configured text column, or the first of TEXT_COLUMNS present."""
    if text_column is not None:
        if text_column not in columns:
            raise DataError(f"{where}: no text column {text_column!r} (columns: {list(columns)})")
        return text_column
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    raise DataError(
        f"{where}: no text column; looked for {', '.join(TEXT_COLUMNS)} "
        f"(columns: {list(columns)}); set text_column"
    )


def read_sequence_file(
    path: str, text_column: str | None = None, label_column: str = "label"
) -> list[SequenceExample]:
    """Read text/label examples from .jsonl/.json (JSON Lines), .csv or .tsv (with a header)."""
    ext = os.path.splitext(path)[1].lower()
    examples = []
    if ext in JSONL_EXTS:
        for n, obj in _json_objects(path):
            where = f"{path}, line {n}"
            key = _pick_text_column(list(obj), text_column, where)
            if label_column not in obj:
                raise DataError(f"{where}: missing key {label_column!r} (keys: {sorted(obj)})")
            text = obj[key]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: {key!r} must be a non-empty string")
            examples.append(SequenceExample(text, _label_str(obj[label_column], where), path, n))
    elif ext in TABLE_EXTS:
        text = "\n".join(_read_lines(path))
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if ext == ".tsv" else ",")
        header = [h.strip() for h in next(reader, [])]
        key = _pick_text_column(header, text_column, f"{path}, line 1 (header)")
        if label_column not in header:
            raise DataError(f"{path}, line 1 (header): no {label_column!r} column (columns: {header})")
        text_at, label_at = header.index(key), header.index(label_column)
        end = reader.line_num
        for row in reader:
            # A quoted field may span lines: the row starts just after the previous one ended.
            start, end = end + 1, reader.line_num
            where = f"{path}, line {start}"
            if not any(v.strip() for v in row):
                continue  # blank line
            if len(row) > len(header):
                raise DataError(f"{where}: {len(row)} fields but the header has {len(header)} ({header}); "
                                "quote a text that contains the delimiter")
            value = row[text_at] if text_at < len(row) else ""
            label = row[label_at] if label_at < len(row) else ""
            if not value.strip():
                raise DataError(f"{where}: row has no text in column {key!r}")
            if not label.strip():
                raise DataError(f"{where}: row has no label in column {label_column!r}")
            examples.append(SequenceExample(value, label.strip(), path, start))
    else:
        raise DataError(f"{path}: unsupported extension {ext!r} for a sequence task "
                        f"(use {', '.join(JSONL_EXTS + TABLE_EXTS)})")
    if not examples:
        raise DataError(f"{path}: no examples found (empty split)")
    return examples


def read_token_file(path: str, iob1_to_iob2: bool = False) -> list[TokenExample]:
    """Token examples from JSON Lines (.jsonl, .json) or CoNLL columns (any other extension)."""
    if os.path.splitext(path)[1].lower() in JSONL_EXTS:
        return read_token_jsonl(path, iob1_to_iob2)
    return read_conll(path, iob1_to_iob2)


def find_split_file(directory: str, split: str, extensions: Sequence[str]) -> str:
    """The one file in `directory` holding `split` (matched by stem, e.g. dev.conll for validation)."""
    names = [stem + ext for stem in SPLIT_STEMS[split] for ext in extensions]
    found = [name for name in names if os.path.isfile(os.path.join(directory, name))]
    if not found:
        raise DataError(f"{directory}: no {split} file; looked for {', '.join(names)}")
    if len(found) > 1:
        raise DataError(f"{directory}: several {split} files ({', '.join(found)}); keep only one")
    return os.path.join(directory, found[0])


# ----------------------------------------------------------------------------- Hugging Face


HubReader = Callable[[Any, str], "list | None"]  # (one datasets split, its name) -> examples


def splits_from_hf(dataset_dict, read_rows: HubReader, *, name: str = "dataset",
                   splits: Sequence[str] = SPLITS) -> dict[str, list]:
    """{split: examples} of a `datasets.DatasetDict`, each split read by `read_rows` (a task's
    hub reader); a split it returns None for (labels hidden) is left out."""
    out = {}
    for split in splits:
        key = next((k for k in HUB_SPLIT_NAMES[split] if k in dataset_dict), None)
        if key is None:
            raise DataError(f"{name}: no {split} split (splits: {list(dataset_dict)})")
        ds = dataset_dict[key]
        source = f"{name}[{key}]"
        if len(ds) == 0:
            raise DataError(f"{source}: empty split")
        examples = read_rows(ds, source)
        if examples is None:
            continue
        if not examples:
            raise DataError(f"{source}: no examples (empty split)")
        out[split] = examples
    return out


def token_examples_from_hf(ds, source: str, *, iob1_to_iob2: bool = False,
                           label_column: str | None = None) -> list[TokenExample]:
    """Token examples of one hub split: a `tokens` column and a tag column (ClassLabel ids named)."""
    import datasets  # imported lazily: only hub sources need it

    columns = list(ds.column_names)
    tag_col = label_column or next((c for c in TAG_COLUMNS if c in columns), None)
    if "tokens" not in columns or tag_col not in columns:
        raise DataError(f"{source}: expected columns 'tokens' and one of "
                        f"{label_column or TAG_COLUMNS} (columns: {columns})")
    feature = getattr(ds.features[tag_col], "feature", None)
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    examples = []
    for row, (tokens, tags) in enumerate(zip(ds["tokens"], ds[tag_col])):
        if len(tokens) != len(tags):
            raise DataError(f"{source}, row {row}: {len(tokens)} tokens but {len(tags)} tags")
        if not tokens:
            continue  # some hub copies keep empty document-separator rows
        tags = tuple(names[t] if names is not None else str(t) for t in tags)
        if iob1_to_iob2:
            tags = convert_iob1_to_iob2(tags)
        examples.append(TokenExample(tuple(tokens), tags, source, row, 0, "row"))
    return examples


def sequence_examples_from_hf(ds, source: str, *, text_column: str | None = None,
                              label_column: str | None = None) -> list[SequenceExample] | None:
    """Text/label examples of one hub split (ClassLabel ids named); None when every label is
    hidden (-1), as GLUE's test splits are."""
    import datasets

    columns = list(ds.column_names)
    text_col = _pick_text_column(columns, text_column, source)
    label_col = label_column or "label"
    if label_col not in columns:
        raise DataError(f"{source}: no {label_col!r} column (columns: {columns})")
    feature = ds.features[label_col]
    names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    labels = list(ds[label_col])
    if names is not None and all(label == -1 for label in labels):
        # Nothing to evaluate on.
        logger.warning("%s: every label is -1 (hidden); skipping this split", source)
        return None
    examples = []
    for row, (text, label) in enumerate(zip(ds[text_col], labels)):
        where = f"{source}, row {row}"
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: empty text in column {text_col!r}")
        if names is not None:
            if not 0 <= label < len(names):
                raise DataError(f"{where}: label id {label} outside ClassLabel {list(names)}")
            label = names[label]
        examples.append(SequenceExample(text, _label_str(label, where), source, row, "row", names))
    return examples


def load_splits(source: str, *, extensions: Sequence[str], read_file: Callable[[str], list],
                read_hub: HubReader, hub_config: str | None = None,
                splits: Sequence[str] = SPLITS) -> dict[str, list]:
    """{split: examples} from a local directory of split files (found by stem among `extensions`,
    read by `read_file`), or a hub id via datasets.load_dataset (each split read by `read_hub`).
    The readers are a task's (gptjax/tasks.py: Task.load_splits)."""
    if os.path.isdir(source):
        return {s: read_file(find_split_file(source, s, extensions)) for s in splits}
    if os.path.exists(source):
        raise DataError(f"{source}: is a file; pass the directory holding train/validation/test files")
    if source.startswith(("/", ".", "~")):
        # Looks like a path, so a typo should not turn into a hub download.
        raise DataError(f"{source}: no such directory")
    import datasets

    logger.info("loading %s (config %s) with datasets.load_dataset", source, hub_config)
    dataset_dict = datasets.load_dataset(source, hub_config)
    name = source if hub_config is None else f"{source}/{hub_config}"
    return splits_from_hf(dataset_dict, read_hub, name=name, splits=splits)


# ----------------------------------------------------------------------------- labels

_INT_RE = re.compile(r"-?\d+")


@dataclass
class LabelVocab:
    """Label names <-> ids; built from the training split and saved with the run."""

    names: list[str]

    def __post_init__(self):
        self.names = list(self.names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate label names: {self.names}")
        self.label2id = {name: i for i, name in enumerate(self.names)}
        self.id2label = dict(enumerate(self.names))

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_tags(cls, examples: Sequence[TokenExample]) -> "LabelVocab":
        """A token task's tags: O first, then sorted (each B-X/I-X completed by its pair)."""
        tags = {tag for ex in examples for tag in ex.tags}
        # label_all_subwords needs I-X for every B-X, even when no entity in train is longer
        # than one word; adding the pair keeps the vocabulary a valid IOB2 scheme.
        for tag in list(tags):
            if tag[:2] in ("B-", "I-"):
                tags.update(("B-" + tag[2:], "I-" + tag[2:]))
        tags.discard("O")
        return cls(["O"] + sorted(tags))

    @classmethod
    def from_classes(cls, examples: Sequence[SequenceExample]) -> "LabelVocab":
        """A sequence task's classes: ClassLabel order for hub data, else numeric order for int
        labels, else sorted."""
        labels = {ex.label for ex in examples}
        classes = next((ex.classes for ex in examples if ex.classes is not None), None)
        if classes is not None:
            return cls(list(classes))
        if labels and all(_INT_RE.fullmatch(label) for label in labels):
            return cls(sorted(labels, key=int))
        return cls(sorted(labels))

    def save(self, path: str) -> None:
        """Write the names as JSON: {"names": [...]} (id = position)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"names": self.names}, f, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, path: str) -> "LabelVocab":
        """Read a vocabulary written by save()."""
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f)["names"])


def name_labels(splits: dict[str, list], names: Sequence[str]) -> dict[str, list]:
    """Integer label ids (as a dataset dump writes them) replaced by `names` (data.label_names)."""
    def name(label: str, where: str) -> str:
        if not _INT_RE.fullmatch(label):
            return label
        if not 0 <= int(label) < len(names):
            raise DataError(f"{where}: label id {label} outside data.label_names ({len(names)} names)")
        return names[int(label)]

    out = {}
    for split, examples in splits.items():
        if examples and isinstance(examples[0], TokenExample):
            out[split] = [replace(ex, tags=tuple(name(t, ex.where(i)) for i, t in enumerate(ex.tags))) for ex in examples]
        else:
            out[split] = [replace(ex, label=name(ex.label, ex.where())) for ex in examples]
    return out


def check_iob2(splits: dict[str, list]) -> None:
    """Token tags must be IOB2 (O, B-TYPE, I-TYPE), which the entity metrics read: anything else
    is refused before training, naming the file, line and tag, and the fix."""
    openings = {"B-": 0, "I-": 0}
    first_i = None
    for examples in splits.values():
        for ex in examples:
            prev = "O"
            for i, tag in enumerate(ex.tags):
                if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                    if _INT_RE.fullmatch(tag):
                        fix = "the tags are integer ids: name them with data.label_names=('O', 'B-PER', ...)"
                    else:
                        fix = ("tags must be O, B-TYPE or I-TYPE (IOB2) for entity scoring; tags without entities "
                               "(part of speech) train with task=tagging")
                    raise DataError(f"{ex.where(i)}: tag {tag!r} ({ex.tokens[i]!r}) is not IOB2; {fix}")
                if tag[:2] == "B-" or (tag[:2] == "I-" and (prev == "O" or prev[2:] != tag[2:])):
                    openings[tag[:2]] += 1
                    if tag[:2] == "I-" and first_i is None:
                        first_i = f"{ex.where(i)}: {tag!r} after {prev!r}"
                prev = tag
    if openings["I-"] > openings["B-"]:
        raise DataError(f"{first_i}: most entities ({openings['I-']} of {sum(openings.values())}) open with I-, so the "
                        "tags look IOB1; set data.iob1_to_iob2=true to convert them")
    if openings["I-"]:
        logger.warning("%d entities open with I- (first at %s); strict IOB2 scoring does not count them",
                       openings["I-"], first_i)


def _check_policy(policy: str) -> None:
    if policy not in UNKNOWN_LABEL_POLICIES:
        raise ValueError(f"unknown_label must be one of {UNKNOWN_LABEL_POLICIES}, got {policy!r}")


def check_sequence_labels(splits: dict[str, list], vocab: LabelVocab, policy: str = "error") -> dict[str, list]:
    """Fails on a class the vocabulary (the training split's) lacks, naming file and line."""
    _check_policy(policy)
    if policy == "map_to_o":
        raise ValueError("unknown_label='map_to_o' applies to token tasks only")
    for examples in splits.values():
        for ex in examples:
            if ex.label not in vocab.label2id:
                raise DataError(f"{ex.where()}: label {ex.label!r} never appears in the "
                                f"training split (known labels: {vocab.names})")
    return splits


def check_token_labels(splits: dict[str, list], vocab: LabelVocab, policy: str = "error") -> dict[str, list]:
    """Fails (or, with policy "map_to_o", maps to O) on tags the vocabulary lacks."""
    _check_policy(policy)
    known = vocab.label2id
    out = {}
    for split, examples in splits.items():
        mapped, first = 0, None
        fixed = []
        for ex in examples:
            bad = [i for i, tag in enumerate(ex.tags) if tag not in known]
            if not bad:
                fixed.append(ex)
                continue
            i = bad[0]
            if policy == "error":
                raise DataError(
                    f"{ex.where(i)}: label {ex.tags[i]!r} (word {i}, {ex.tokens[i]!r}) never appears "
                    f"in the training split (known labels: {vocab.names}); unknown_label='error' "
                    "(set unknown_label='map_to_o' to map unseen token labels to O)"
                )
            mapped += len(bad)
            first = first or f"{ex.where(i)}: {ex.tags[i]!r}"
            tags = tuple("O" if tag not in known else tag for tag in ex.tags)
            fixed.append(replace(ex, tags=tags))
        if mapped:
            logger.warning("%s split: %d token labels never seen in training mapped to O "
                           "(unknown_label='map_to_o'); first at %s", split, mapped, first)
        out[split] = fixed
    return out


# ----------------------------------------------------------------------------- encoding


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


# ----------------------------------------------------------------------------- batching


def make_buckets(max_length: int, boundaries: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """Bucket lengths below max_length, plus max_length itself: a few static shapes for XLA."""
    return tuple(sorted({b for b in boundaries if 0 < b < max_length})) + (max_length,)


def _bucket_ids(encoded: EncodedSplit, buckets: Sequence[int]) -> np.ndarray:
    """For each example, the index of the smallest bucket that holds it."""
    buckets = np.asarray(buckets)
    if len(buckets) == 0 or np.any(np.diff(buckets) <= 0):
        raise ValueError(f"buckets must be strictly increasing, got {tuple(buckets)}")
    which = np.searchsorted(buckets, encoded.lengths, side="left")
    if len(which) and which.max() >= len(buckets):
        raise ValueError(f"an example of {encoded.lengths.max()} tokens exceeds the largest "
                         f"bucket {buckets[-1]}; encode with max_length <= {buckets[-1]}")
    return which


def batch_plan(encoded: EncodedSplit, batch_size: int, *, buckets: Sequence[int], seed: int = 0,
               epoch: int = 0, shuffle: bool = False,
               drop_last: bool = False) -> list[tuple[int, np.ndarray]]:
    """The epoch's batches as (bucket length, example indices padded with -1 to batch_size)."""
    which = _bucket_ids(encoded, buckets)
    # One generator per (seed, epoch): any epoch's order can be rebuilt on resume.
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    order = rng.permutation(len(encoded)) if shuffle else np.arange(len(encoded))
    plan = []
    for b, length in enumerate(buckets):
        members = order[which[order] == b]  # keeps the (shuffled) order
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            if len(idx) < batch_size:
                if drop_last:
                    break
                idx = np.concatenate([idx, np.full(batch_size - len(idx), -1, dtype=idx.dtype)])
            plan.append((int(length), idx.astype(np.int32)))
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]  # mix buckets across the epoch
    return plan


def num_batches(encoded: EncodedSplit, batch_size: int, *, buckets: Sequence[int],
                drop_last: bool = False) -> int:
    """Batches in one epoch (the same for every seed and epoch)."""
    counts = np.bincount(_bucket_ids(encoded, buckets), minlength=len(buckets))
    per_bucket = counts // batch_size if drop_last else -(-counts // batch_size)
    return int(per_bucket.sum())


def make_batch(encoded: EncodedSplit, indices: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One [B, length] batch; index -1 makes a padding row (all pad, mask 0, labels -100)."""
    B = len(indices)
    input_ids = np.full((B, length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((B, length), dtype=np.int32)
    per_token = encoded.per_token
    labels = np.full((B, length) if per_token else (B,), IGNORE_INDEX, dtype=np.int32)
    word_index = None if encoded.word_index is None else np.full((B, length), -1, dtype=np.int32)
    for row, i in enumerate(indices):
        if i < 0:
            continue
        ids = encoded.input_ids[i]
        n = len(ids)
        input_ids[row, :n] = ids
        attention_mask[row, :n] = 1
        if per_token:
            labels[row, :n] = encoded.labels[i]
        else:
            labels[row] = encoded.labels[i]
        if word_index is not None:
            word_index[row, :n] = encoded.word_index[i]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "example_index": np.asarray(indices, dtype=np.int32)}
    if word_index is not None:
        batch["word_index"] = word_index
    return batch


class EpochBatches(Sequence):
    """A lazy, indexable list of one epoch's batches; slicing (batches[k:]) skips without work."""

    def __init__(self, encoded: EncodedSplit, plan: list[tuple[int, np.ndarray]], pad_id: int):
        self.encoded, self.plan, self.pad_id = encoded, plan, pad_id

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.plan)

    def __getitem__(self, i):
        """Batch i (built now), or for a slice a view of the planned batches."""
        if isinstance(i, slice):
            return EpochBatches(self.encoded, self.plan[i], self.pad_id)
        length, indices = self.plan[i]
        return make_batch(self.encoded, indices, length, self.pad_id)


def epoch_batches(encoded: EncodedSplit, batch_size: int, *, buckets: Sequence[int], pad_id: int,
                  seed: int = 0, epoch: int = 0, shuffle: bool = False, drop_last: bool = False,
                  start: int = 0) -> EpochBatches:
    """The epoch's batches from batch `start` on, deterministic per (seed, epoch); built lazily."""
    plan = batch_plan(encoded, batch_size, buckets=buckets, seed=seed, epoch=epoch,
                      shuffle=shuffle, drop_last=drop_last)
    return EpochBatches(encoded, plan[start:], pad_id)
