"""gptjax: GPT-2 fine-tuning in JAX and Flax NNX."""

import os

# Imported without torch, transformers opens every run with "PyTorch was not found. Models won't be
# available...": gptjax only uses its tokenizers and runs without torch by design. Its advisory
# warnings read this at the time they are issued; a user's own setting wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from gptjax.decoding import Completion, Generator, generate, generate_ids  # noqa: E402
from gptjax.hf import CheckpointError, from_pretrained, save_pretrained  # noqa: E402
from gptjax.model import GPT2, HEADS, SIZES, GPT2Config, abstract_model, count_params, init_model  # noqa: E402
from gptjax.peft import add_lora, merge_lora  # noqa: E402

__all__ = [
    "GPT2",
    "GPT2Config",
    "HEADS",
    "SIZES",
    "CheckpointError",
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
