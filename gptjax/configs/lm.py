"""GPT-2 fine-tuned as a language model on WikiText-2 (raw), as transformers' run_clm example does
it: each non-empty line a document, packed into blocks of 512 tokens with EOS between documents.

Validation perplexity of the pretrained gpt2 on these blocks is the starting point; a few epochs at
5e-5 bring it down. For gpt2-medium or larger on one accelerator, add --config.lora.rank=8 (and a
learning rate near 3e-4) or --config.model.dtype=bfloat16.
"""

from gptjax.config import base_config


def get_config():
    config = base_config()
    config.task = "causal_lm"
    config.model.name_or_path = "openai-community/gpt2"
    config.data.source = "Salesforce/wikitext"
    config.data.hub_config = "wikitext-2-raw-v1"
    config.data.max_length = 512
    config.data.buckets = (128, 256, 512)  # only the last block of a split is shorter than max_length
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.num_epochs = 3
    config.train.learning_rate = 5e-5
    config.train.warmup_ratio = 0.05
    config.train.log_every = 20
    config.checkpoint.every_steps = 200
    return config
