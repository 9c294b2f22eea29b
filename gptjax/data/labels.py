"""Labels: the vocabulary a run's train split gives (saved with the run), the checks every
split's labels pass before training, IOB1 -> IOB2 conversion, and IGNORE_INDEX, the label of
positions the loss and metrics skip."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gptjax.data.examples import SequenceExample, TokenExample
from gptjax.errors import DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions the loss and metrics skip


def convert_iob1_to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 -> IOB2: an I-X that does not continue an X entity becomes B-X."""
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return tuple(out)


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


def check_sequence_labels(splits: dict[str, list], vocab: LabelVocab, policy: str = "error") -> dict[str, list]:
    """Fails on a class the vocabulary (the training split's) lacks, naming file and line."""
    if policy == "map_to_o":
        raise ValueError("unknown_label='map_to_o' applies to token tasks only")
    for examples in splits.values():
        for ex in examples:
            if ex.label not in vocab.label2id:
                raise DataError(f"{ex.where()}: label {ex.label!r} never appears in the "
                                f"training split (known labels: {vocab.names})")
    return splits


def check_token_labels(splits: dict[str, list], vocab: LabelVocab, policy: str = "error") -> dict[str, list]:
    """Fails (or, with policy "map_to_o", maps to O) on tags the vocabulary lacks; the policy is
    data.unknown_label, whose choices config.validate checks."""
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
            if policy != "map_to_o":
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


