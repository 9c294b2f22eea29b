"""Offline in under two minutes on a 2-core CPU: a small GPT-2 trained from scratch on the synthetic
NER corpus gptjax generates, with a byte-level BPE tokenizer trained on the fly."""

from gptjax.config import base_config


def get_config():
    config = base_config()
    config.task = "token"
    config.model.init = "scratch"
    config.model.name_or_path = "gpt2"
    config.model.arch.n_layer = 2
    config.model.arch.n_embd = 128
    config.model.arch.n_head = 4
    config.model.arch.n_positions = 64
    config.tokenizer.name_or_path = "train"
    config.tokenizer.vocab_size = 1000
    config.data.source = "synthetic"
    config.data.max_length = 64
    config.data.buckets = (16, 32, 64)
    config.train.batch_size = 32
    config.train.num_epochs = 6
    config.train.learning_rate = 1e-3
    config.train.log_every = 20
    return config
