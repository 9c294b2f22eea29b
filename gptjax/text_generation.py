"""--mode=generate: a causal-LM model continues prompts, one a line, as JSON Lines.

One object per input line, in order: {"line", "prompt", "completion", "completion_ids",
"finish_reason" ("eos", "stop" or "length"), "truncated"}. The settings are the config's
generate.* keys. Prompts go through gptjax/decoding.py's Generator, built once, in chunks of
generate.batch_size, so a stream of prompts reuses a few compiled programs.
"""

from __future__ import annotations

import logging

from gptjax.config import check_generation
from gptjax.errors import ConfigError
from gptjax.tokenizer import load_tokenizer

log = logging.getLogger("gptjax")
CHUNK_BATCHES = 4  # prompts are read and decoded this many batches at a time


class TextGenerator:
    """A trained (or exported, or hub) causal-LM model with its tokenizer, ready for prompts."""

    def __init__(self, trained):
        from gptjax.decoding import Generator

        if trained.task.head != "causal_lm":
            raise ConfigError(f"{trained.source}: a {trained.task.name} model; --mode=generate needs a causal-LM "
                              "model (task=causal_lm, or a GPT2LMHeadModel checkpoint)")
        self.settings = trained.config.generate
        model = trained.steps.model()
        check_generation(trained.config, model.config.n_positions)
        # Prompts are text as written: no space added before them (classification runs add one).
        tokenizer = load_tokenizer(trained.tokenizer_dir)
        self.generator = Generator(model, tokenizer, mesh=trained.steps.mesh, batch_size=self.settings.batch_size)
        self.num_truncated = 0

    def complete(self, prompts: list[str], numbers: list[int]) -> list[dict]:
        g = self.settings
        results = self.generator.generate(prompts, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                          top_k=g.top_k, top_p=g.top_p, seed=g.seed, stop=tuple(g.stop), truncate=True)
        out = []
        for number, r in zip(numbers, results):
            if r.truncated:
                self.num_truncated += 1
                log.warning("line %d: too long for the model with generate.max_new_tokens=%d; its start was dropped",
                            number, g.max_new_tokens)
            out.append({"line": number, "prompt": r.prompt, "completion": r.completion,
                        "completion_ids": r.completion_ids, "finish_reason": r.finish_reason, "truncated": r.truncated})
        return out

    def predict_stream(self, lines):
        """Output objects for (number, text) lines, decoded a chunk at a time."""
        from gptjax.predict import in_chunks

        return in_chunks(lines, self.settings.batch_size * CHUNK_BATCHES, self.complete)

    def summary(self, count: int) -> str:
        return f"completed {count} prompts; {self.num_truncated} had their start dropped to fit the model"
