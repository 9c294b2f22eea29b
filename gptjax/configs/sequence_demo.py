"""Sequence classification offline in about a minute on a 2-core CPU: a small GPT-2 trained from
scratch on the synthetic sentiment corpus gptjax generates (short reviews whose label follows from
their adjectives and negations), with a byte-level BPE tokenizer trained on the fly."""

from gptjax.config import base_config


def get_config():
    config = base_config()
    config.task = "sequence"
    config.model.init = "scratch"
    config.model.name_or_path = "gpt2"
    config.model.arch.n_layer = 2
    config.model.arch.n_embd = 64
    config.model.arch.n_head = 4
    config.model.arch.n_positions = 48
    config.tokenizer.name_or_path = "train"
    config.tokenizer.vocab_size = 400
    config.data.source = "synthetic"
    config.data.synthetic_sizes = (2000, 300, 300)  # reviews
    config.data.max_length = 48
    config.data.buckets = (16, 32, 48)
    config.train.batch_size = 32
    config.train.num_epochs = 4
    config.train.learning_rate = 2e-3
    config.train.log_every = 20
    return config
