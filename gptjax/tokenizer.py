"""The tokenizer: trained on the fly (tokenizer.name_or_path='train'), loaded from a hub id or a
directory, and fingerprinted (run.json keeps the fingerprint: resume and the loader refuse a
tokenizer other than the run's)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from gptjax.errors import CheckpointError

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, add_prefix_space: bool = True):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts` (deterministic), as a
    transformers GPT2Tokenizer (a PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        # All 256 byte symbols, so any text encodes without an unknown token, as in GPT-2.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Rebuilding through GPT2Tokenizer gives the GPT-2 configuration (byte-level pre-tokenizer
    # and decoder, no special tokens added) and a tokenizer_config.json that AutoTokenizer
    # loads back as the same class.
    return GPT2Tokenizer(vocab=model["vocab"], merges=merges, add_prefix_space=add_prefix_space,
                         unk_token=EOS, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                         model_max_length=1024)


def load_tokenizer(name_or_path, add_prefix_space: bool | None = None):
    """A saved tokenizer (hub id or directory) as AutoTokenizer loads it, with the task's
    add_prefix_space (tasks.Task.prefix_space); None keeps the saved setting."""
    from transformers import AutoTokenizer

    settings = {} if add_prefix_space is None else {"add_prefix_space": add_prefix_space}
    return AutoTokenizer.from_pretrained(str(name_or_path), **settings)


def load_run_tokenizer(directory, add_prefix_space: bool = True):
    """A run's or an export's own tokenizer; one that cannot be loaded is a damaged artifact."""
    try:
        return load_tokenizer(directory, add_prefix_space)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a bad directory
        raise CheckpointError(f"{directory}: the tokenizer cannot be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's whole definition (its backend's JSON, else its vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
