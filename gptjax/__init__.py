"""gptjax: GPT-2 fine-tuning in JAX and Flax NNX."""

import importlib
import os

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
    "gptjax.model": ("GPT2", "HEADS", "SIZES", "GPT2Config", "abstract_model", "count_params", "init_model"),
    "gptjax.lora": ("add_lora", "merge_lora"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'gptjax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "GPT2",
    "GPT2Config",
    "HEADS",
    "SIZES",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GptjaxError",
    "Completion",
    "Generator",
    "abstract_model",
    "add_lora",
    "count_params",
    "from_pretrained",
    "generate",
    "generate_ids",
    "init_model",
    "merge_lora",
    "save_pretrained",
]
