"""transformers' PyTorch generate as a runner of gptjax.bench.decoding (benchmarks/generate.py):
torch stays out of the gptjax package."""

from __future__ import annotations

import os
import platform

from gptjax.bench.decoding import random_prompts
from gptjax.bench.records import host_cpu


class TorchDecoding:
    """transformers' GPT2LMHeadModel.generate on the same shapes, greedy, EOS off."""

    framework = "pytorch-eager"

    def __init__(self, model_config, batch: int, prompt_length: int, new_tokens: int, *, seed: int = 0,
                 threads: int | None = None):
        import torch
        import transformers

        self.torch = torch
        if threads:
            # One thread keeps PyTorch sane on a machine others are using: its OpenMP team of
            # several threads stalls whenever one of them is descheduled (5x slower, measured).
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        hf = transformers.GPT2Config(**model_config.to_hf_dict())
        self.model = transformers.GPT2LMHeadModel(hf).eval()
        if model_config.dtype != "float32":
            self.model = self.model.to(getattr(torch, model_config.dtype))
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.eos = hf.eos_token_id
        self.ids = torch.tensor(random_prompts(batch, prompt_length, model_config.vocab_size, seed))
        self.mask = torch.ones_like(self.ids)

    def __call__(self, new_tokens: int):
        with self.torch.inference_mode():
            return self.model.generate(input_ids=self.ids, attention_mask=self.mask, max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=self.eos)

    def environment(self) -> dict:
        import transformers

        return {
            "device_kind": "cpu", "num_devices": 1, "platform": "cpu", "mesh": {}, "host_cpu": host_cpu(),
            "versions": {"torch": self.torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version(), "torch_threads": self.torch.get_num_threads()},
            "xla_flags": "", "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "load_average": round(os.getloadavg()[0], 2),
        }
