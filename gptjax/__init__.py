"""gptjax: GPT-2 fine-tuning in JAX and Flax NNX.

Training and trained runs:
    load_config(name) / base_config()   a config (gptjax/configs/NAME.py, or a path)
    train_and_evaluate(config, workdir) train, evaluate, checkpoint and export a run
    load(workdir_or_export)             a trained run: .model, .tokenizer, .labels, .config
Models and checkpoints:
    GPT2, GPT2Config, SIZES, HEADS, init_model, abstract_model, count_params
    from_pretrained(hub_id_or_dir, head), save_pretrained(model, dir)
    add_lora(model, ...), merge_lora(model)
Decoding:
    generate, generate_ids, Generator, Completion
Errors (all GptjaxError):
    ConfigError, DataError, CheckpointError

The command line is `gptjax` (or `python -m gptjax`, `python run.py`): `gptjax --help`.
"""

import importlib
import importlib.metadata
import os

try:
    __version__ = importlib.metadata.version("gptjax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

# Imported without torch, transformers opens every run with "PyTorch was not found. Models won't be
# available...": gptjax only uses its tokenizers and runs without torch by design. Its advisory
# warnings read this at the time they are issued; a user's own setting wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The public names load on first use, so that the command line starts (and, on a CPU, restarts
# itself with a tuned allocator: gptjax/malloc.py) before JAX is imported.
_EXPORTS = {
    "gptjax.decoding": ("Completion", "Generator", "generate", "generate_ids"),
    "gptjax.errors": ("CheckpointError", "ConfigError", "DataError", "GptjaxError"),
    "gptjax.hf": ("from_pretrained", "save_pretrained"),
    "gptjax.artifact": ("load",),
    "gptjax.config": ("base_config", "load_config"),
    "gptjax.train": ("train_and_evaluate",),
    "gptjax.model": ("GPT2", "HEADS", "SIZES", "GPT2Config", "abstract_model", "count_params", "init_model"),
    "gptjax.lora": ("add_lora", "merge_lora"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


__all__ = sorted(_MODULE_OF)
