"""GPT-2 sequence classification on GLUE SST-2 (binary sentiment).

GLUE's SST-2 test labels are hidden (-1), so validation doubles as the reported test split.
"""

from gptjax.config import base_config


def get_config():
    config = base_config()
    config.task = "sequence"
    config.model.name_or_path = "openai-community/gpt2"
    config.data.source = "nyu-mll/glue"
    config.data.hub_config = "sst2"
    config.data.text_column = "sentence"
    config.data.test_split = "validation"
    config.data.max_length = 128
    config.train.batch_size = 32
    config.train.num_epochs = 3
    config.train.learning_rate = 2e-5
    return config
