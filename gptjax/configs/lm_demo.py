"""Causal LM offline in under two minutes on a 2-core CPU: a small GPT-2 trained from scratch on
the synthetic text corpus gptjax generates (what follows a weekday or a month, counting on,
capitals, copying a list), with a byte-level BPE tokenizer trained on the fly. The documents are
mostly predictable from their first words, so validation perplexity falls far below a unigram
model's."""

from gptjax.config import base_config


def get_config():
    config = base_config()
    config.task = "causal_lm"
    config.model.init = "scratch"
    config.model.name_or_path = "gpt2"
    config.model.arch.n_layer = 2
    config.model.arch.n_embd = 128
    config.model.arch.n_head = 4
    config.model.arch.n_positions = 128
    config.tokenizer.name_or_path = "train"
    config.tokenizer.vocab_size = 500
    config.data.source = "synthetic"
    config.data.synthetic_sizes = (4000, 400, 400)  # documents
    config.data.max_length = 128
    config.data.buckets = (32, 64, 128)
    config.train.batch_size = 16
    config.train.eval_batch_size = 16
    config.train.num_epochs = 8
    config.train.learning_rate = 2e-3
    config.train.log_every = 20
    config.generate.prompt_length = 64  # the decoding benchmark's prompt, with max_new_tokens=64: n_positions
    return config
