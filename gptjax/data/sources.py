"""The examples a config's data.source gives, split by split: the synthetic corpus of its task,
local files, or a Hugging Face Hub dataset, read through the task's readers and checked against
its labels."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from urllib.parse import urlparse

from gptjax import tasks
from gptjax.errors import ConfigError, DataError, SetupError

log = logging.getLogger("gptjax")
OFFLINE_HINT = (
    "Without the Hugging Face Hub, point --config.model.name_or_path at a local directory with "
    "config.json and model.safetensors (and tokenizer files), --config.data.source at a directory "
    "with train/validation/test files, or run --config=demo, --config=sequence_demo or "
    "--config=lm_demo, which need no download."
)
# The hub's host once the probe has found it out of reach: errors then say so, not the advice
# huggingface_hub gives for an HF_HUB_OFFLINE the user never set.
_unreachable: list[str] = []


def hub_failure(key: str, value: str, e: Exception) -> str:
    """The message for config key `key`, whose `value` (a hub id or a local path) could not be loaded."""
    if _unreachable and is_hub_id(value):
        return (f"{key}={value!r}: not in the local cache, and the Hugging Face Hub ({_unreachable[0]}) is "
                "unreachable; offline, use local files (--config.data.source=DIR --config.model.name_or_path=DIR) "
                "or a demo (--config=demo, --config=sequence_demo, --config=lm_demo)")
    return f"{key}={value!r}: could not load it ({type(e).__name__}: {e}).\n{OFFLINE_HINT}"


def is_hub_id(name: str | None) -> bool:
    return bool(name) and name not in ("synthetic", "train") and not os.path.exists(name) and not name.startswith(("/", ".", "~"))


def use_cache_only_if_hub_unreachable(timeout: float = 3.0) -> None:
    """Probes the hub once; if it cannot be reached, switches huggingface_hub and datasets to
    their offline mode, so cached files still load and missing ones fail at once instead of
    after a minute of retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return
    except OSError:
        log.warning("the Hugging Face Hub (%s) is unreachable: using the local cache only", host)
        _unreachable[:] = [host]
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def load_data(config, names=None) -> dict[str, list]:
    """{split: examples} of the config's source; `names` picks splits (default: all the run
    uses)."""
    cfg = config.data
    source = cfg.source
    if source is None:
        raise ConfigError("data.source is not set: a hub dataset id, a local directory, or 'synthetic'")
    if source == "synthetic":
        task = tasks.get(config.task)
        if task.synthetic is None:
            have = ", ".join(t.name for t in tasks.TASKS.values() if t.synthetic is not None)
            raise ConfigError(f"data.source='synthetic': there is no synthetic corpus for task={task.name!r} ({have} have one)")
        # Written out as split files (the same on every process: it is made from a seed), so the
        # demos run through the same reader as real data.
        with tempfile.TemporaryDirectory() as directory:
            task.synthetic(cfg.synthetic_seed, tuple(cfg.synthetic_sizes), directory)
            return _load_splits(config, directory, names)
    return _load_splits(config, source, names)


def _load_splits(config, source: str, names) -> dict[str, list]:
    cfg = config.data
    if cfg.test_split not in ("test", "validation"):
        raise ConfigError(f"data.test_split={cfg.test_split!r}: choose 'test' or 'validation'")
    if names is None:
        names = ("train", "validation", "test") if cfg.test_split == "test" else ("train", "validation")
    task = tasks.get(config.task)
    try:
        splits = task.load_splits(source, cfg, names)
    except (DataError, SetupError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds when the hub is out of reach
        raise SetupError(hub_failure("data.source", source, e)) from e
    splits = task.check(splits, cfg)  # labels named and checked against the task's scheme, before training
    if "validation" in splits:
        splits.setdefault("test", splits["validation"])
    return splits
