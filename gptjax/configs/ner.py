"""GPT-2 fine-tuned for NER on CoNLL-2003, the seed's recipe with its label alignment bug fixed.

AdamW at 2e-5, batch 16, 5 epochs as in the seed; added: linear warm-up (10%) and decay, weight
decay 0.01 on matrices, gradient clipping at 1.0, and the best validation epoch kept.
"""

from gptjax.config import base_config


def get_config():
    config = base_config()
    config.task = "token"
    config.model.name_or_path = "openai-community/gpt2"
    # A parquet copy: datasets>=4 no longer runs the original conll2003 loading script.
    config.data.source = "eriktks/conll2003"
    config.data.max_length = 128
    config.train.batch_size = 16
    config.train.num_epochs = 5
    config.train.learning_rate = 2e-5
    config.train.patience = 2
    return config
