"""gptjax: GPT-2 fine-tuning in JAX and Flax NNX."""

# gptjax.generate is the function (the module stays importable: from gptjax.generate import Generator).
from gptjax.generate import Completion, Generator, generate, generate_ids
from gptjax.hf import CheckpointError, from_pretrained, save_pretrained
from gptjax.model import GPT2, HEADS, SIZES, GPT2Config, abstract_model, count_params, init_model
from gptjax.peft import add_lora, merge_lora

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
