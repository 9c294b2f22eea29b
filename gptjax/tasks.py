"""A task is one entry here: its head, how to read and score its data, and its export class.

The rest of gptjax looks tasks up by name (config.task) instead of spelling out the pairing.
"""

from __future__ import annotations

import dataclasses

from gptjax.config import ConfigError
from gptjax.hf import ARCHITECTURES


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # config.task
    head: str  # gptjax.model's head
    primary_metric: str  # what best-model selection and early stopping maximise

    @property
    def architecture(self) -> str:
        """The transformers class an export of this task loads as."""
        return ARCHITECTURES[self.head]


TASKS = {
    "token": Task("token", "token_classification", "f1"),  # strict IOB2 entity F1
    "sequence": Task("sequence", "sequence_classification", "f1"),  # macro F1
}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task={name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def architectures() -> list[str]:
    return [t.architecture for t in TASKS.values()]


def by_architecture(names, head: str | None = None) -> Task | None:
    """The task whose export class is among `names` (a config.json's architectures)."""
    return next((t for t in TASKS.values() if t.architecture in names and head in (None, t.head)), None)
