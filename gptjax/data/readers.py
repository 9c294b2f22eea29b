"""Readers: split files (CoNLL columns, JSON Lines, CSV/TSV tables, plain text) and Hugging Face
datasets into examples (gptjax/data/examples.py), every error naming the file and line.

A local source is a directory of split files, found by stem (train, validation or dev, test)
among a task's extensions; a hub source is read one datasets split at a time by a task's hub
reader. Which readers a task uses is its entry in gptjax/tasks.py.

Causal-LM text: blank lines and rows are skipped (wikitext's separators), as run_clm's
line-by-line mode skips them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gptjax.data.examples import CompletionExample, SequenceExample, TextExample, TokenExample
from gptjax.data.labels import convert_iob1_to_iob2
from gptjax.errors import DataError, SetupError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# File stems accepted for each split of a local directory.
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
CONLL_EXTS = (".txt", ".conll", ".iob")
JSONL_EXTS = (".jsonl", ".json")
TABLE_EXTS = (".csv", ".tsv")
TEXT_EXTS = (".txt",)
LM_EXTS = TEXT_EXTS + JSONL_EXTS
HUB_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}
TEXT_COLUMNS = ("text", "sentence")  # auto-detected text column names, in this order
TAG_COLUMNS = ("tags", "ner_tags")  # auto-detected tag column names, in this order


def read_lines(path: str) -> list[str]:
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

    for n, raw in enumerate(read_lines(path), 1):
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


def json_objects(path: str) -> Iterable[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    for n, raw in enumerate(read_lines(path), 1):
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
    for n, obj in json_objects(path):
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
        for n, obj in json_objects(path):
            where = f"{path}, line {n}"
            key = _pick_text_column(list(obj), text_column, where)
            if label_column not in obj:
                raise DataError(f"{where}: missing key {label_column!r} (keys: {sorted(obj)})")
            text = obj[key]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: {key!r} must be a non-empty string")
            examples.append(SequenceExample(text, _label_str(obj[label_column], where), path, n))
    elif ext in TABLE_EXTS:
        text = "\n".join(read_lines(path))
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
    try:
        import datasets
    except ImportError:  # an optional dependency: only hub datasets need it
        raise SetupError(f"data.source={source!r}: a Hugging Face Hub dataset needs the datasets package: "
                         "pip install 'gptjax[hub]'") from None

    logger.info("loading %s (config %s) with datasets.load_dataset", source, hub_config)
    dataset_dict = datasets.load_dataset(source, hub_config)
    name = source if hub_config is None else f"{source}/{hub_config}"
    return splits_from_hf(dataset_dict, read_hub, name=name, splits=splits)


# ----------------------------------------------------------------------------- causal LM


def read_text_file(path: str) -> list[TextExample]:
    """One document a non-blank line."""
    examples = [TextExample(line, source=path, line=n) for n, line in enumerate(read_lines(path), 1) if line.strip()]
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
    for n, obj in json_objects(path):
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
