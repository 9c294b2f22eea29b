"""From a config to what training needs: the data, its label vocabulary, a tokenizer and a model.

Data flows one way: config -> (splits, labels, tokenizer) -> encoded splits + model -> train.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jax

from gptjax import data, peft, synthetic
from gptjax.config import ConfigError
from gptjax.hf import CheckpointError, from_pretrained, resolve_checkpoint
from gptjax.model import GPT2, GPT2Config, init_model

log = logging.getLogger("gptjax")

HEAD_OF_TASK = {"token": "token_classification", "sequence": "sequence_classification"}
LABELS_FILE = "labels.json"
OFFLINE_HINT = (
    "Without the Hugging Face Hub, point --config.model.name_or_path at a local directory with "
    "config.json and model.safetensors (and tokenizer files), --config.data.source at a directory "
    "with train/validation/test files (CoNLL columns or JSONL), or run --config=demo, which needs "
    "no download."
)


class SetupError(RuntimeError):
    """The run cannot start: a source cannot be reached or read. The message says what to do."""


def is_hub_id(name: str | None) -> bool:
    return bool(name) and name not in ("synthetic", "train") and not os.path.exists(name) and not name.startswith(("/", ".", "~"))


def use_cache_only_if_hub_unreachable(timeout: float = 3.0) -> None:
    """Probes the hub once; if it cannot be reached, switches huggingface_hub and datasets to
    their offline mode, so cached files still load and missing ones fail at once instead of
    after a minute of retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return
    except OSError:
        log.warning("the Hugging Face Hub (%s) is unreachable: using the local cache only", host)
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass


@dataclasses.dataclass
class Experiment:
    config: Any
    task: str
    vocab: data.LabelVocab
    tokenizer: Any
    encoded: dict[str, data.EncodedSplit]
    buckets: tuple[int, ...]
    pad_id: int
    model: GPT2 | None = None


def load_data(config, workdir: Path) -> dict[str, list]:
    cfg = config.data
    source = cfg.source
    if source == "synthetic":
        # Written out as CoNLL files so the demo runs through the same reader as real data.
        source = str(workdir / "data")
        if jax.process_index() == 0:
            corpus = synthetic.make_ner_corpus(seed=cfg.synthetic_seed, sizes=tuple(cfg.synthetic_sizes))
            synthetic.write_corpus(corpus, source)
        _all_processes_reach("synthetic data written")
    if cfg.test_split not in ("test", "validation"):
        raise ConfigError(f"data.test_split={cfg.test_split!r}: choose 'test' or 'validation'")
    names = ("train", "validation", "test") if cfg.test_split == "test" else ("train", "validation")
    try:
        splits = data.load_splits(
            source, config.task, iob1_to_iob2=cfg.iob1_to_iob2, text_column=cfg.text_column,
            label_column=cfg.label_column, hub_config=cfg.hub_config, splits=names,
        )
    except data.DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds when the hub is out of reach
        raise SetupError(f"data.source={source!r}: could not load it ({type(e).__name__}: {e}).\n{OFFLINE_HINT}") from e
    splits.setdefault("test", splits["validation"])
    return splits


def _all_processes_reach(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def load_tokenizer(config, train_examples, model_dir: Path | None):
    """The tokenizer: trained on the train split, named in the config, or the checkpoint's own."""
    cfg = config.tokenizer
    if cfg.name_or_path == "train":
        texts = synthetic.corpus_texts(train_examples) if config.task == "token" else [ex.text for ex in train_examples]
        return synthetic.train_tokenizer(texts, vocab_size=cfg.vocab_size)
    from transformers import AutoTokenizer

    name = cfg.name_or_path or str(model_dir or config.model.name_or_path)
    try:
        # add_prefix_space: words arrive pre-split, and GPT-2 encodes a word differently without one.
        return AutoTokenizer.from_pretrained(name, add_prefix_space=True)
    except Exception as e:  # noqa: BLE001
        raise SetupError(f"tokenizer {name!r}: could not load it ({type(e).__name__}: {e}).\n{OFFLINE_HINT}") from e


def model_overrides(config) -> dict:
    cfg = config.model
    changes = {"dtype": cfg.dtype, "attention": cfg.attention, "remat": cfg.remat}
    if cfg.dropout is not None:
        changes.update(resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
    return changes


def build_model(config, vocab: data.LabelVocab, tokenizer, model_dir: Path | None) -> GPT2:
    cfg = config.model
    head = HEAD_OF_TASK[config.task]
    if cfg.init == "scratch":
        arch = {k: v for k, v in cfg.arch.items() if v is not None}
        base = GPT2Config.named(cfg.name_or_path) if cfg.name_or_path else GPT2Config()
        special = tokenizer.eos_token_id
        model_config = base.replace(
            vocab_size=len(tokenizer), bos_token_id=special, eos_token_id=special, **arch, **model_overrides(config)
        )
        model = init_model(model_config, head, labels=vocab.names, seed=config.train.seed)
    elif cfg.init == "pretrained":
        model = from_pretrained(
            str(model_dir), head, labels=vocab.names, reinit_head=cfg.reinit_head,
            seed=config.train.seed, **model_overrides(config),
        )
    else:
        raise ConfigError(f"model.init={cfg.init!r}: choose 'pretrained' or 'scratch'")
    return peft.adapt(model, config)  # LoRA adapters, or the frozen bottom blocks marked


def checkpoint_dir(config) -> Path | None:
    """The pretrained checkpoint as a local directory (fetched first, so a missing one fails fast)."""
    if config.model.init != "pretrained":
        return None
    try:
        return resolve_checkpoint(config.model.name_or_path)
    except CheckpointError as e:
        raise SetupError(f"model.name_or_path: {e}\n{OFFLINE_HINT}") from e


def encode(config, splits, tokenizer, vocab) -> dict[str, data.EncodedSplit]:
    cfg = config.data
    if config.task == "token":
        return {
            name: data.encode_token_split(examples, tokenizer, vocab, cfg.max_length, cfg.label_all_subwords)
            for name, examples in splits.items()
        }
    return {name: data.encode_sequence_split(examples, tokenizer, vocab, cfg.max_length) for name, examples in splits.items()}


def prepare(config, workdir: Path, model_dir: Path | None = None) -> Experiment:
    """Loads and checks the data, the label vocabulary, the tokenizer and the model, and tokenises
    every split: all before any training starts.

    A new run builds the vocabulary from the train split (saved to WORKDIR/labels.json) and the
    model from the config; with `model_dir` (a trained run's export) all three come from the run.
    """
    if config.task not in HEAD_OF_TASK:
        raise ConfigError(f"task={config.task!r}: choose 'token' or 'sequence'")
    peft.check_config(config)
    sources = [config.data.source, config.tokenizer.name_or_path]
    if model_dir is None and config.model.init == "pretrained":
        sources.append(config.model.name_or_path)
    if any(is_hub_id(name) for name in sources):
        use_cache_only_if_hub_unreachable()
    pretrained = model_dir or checkpoint_dir(config)
    splits = load_data(config, workdir)
    if model_dir is None:
        vocab = data.LabelVocab.from_examples(splits["train"], config.task)
        if jax.process_index() == 0:
            vocab.save(str(workdir / LABELS_FILE))
    else:
        vocab = data.LabelVocab.load(str(workdir / LABELS_FILE))
    splits = data.check_labels(splits, vocab, config.task, policy=config.data.unknown_label)
    if model_dir is None:
        tokenizer = load_tokenizer(config, splits["train"], pretrained)
        model = build_model(config, vocab, tokenizer, pretrained)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), add_prefix_space=True)
        model = from_pretrained(str(model_dir), HEAD_OF_TASK[config.task], labels=vocab.names, **model_overrides(config))
    if config.data.max_length > model.config.n_positions:
        raise ConfigError(f"data.max_length={config.data.max_length} exceeds the model's n_positions={model.config.n_positions}")
    encoded = encode(config, splits, tokenizer, vocab)
    for name, split in encoded.items():
        log.info("%s: %d examples, %d truncated to %d tokens", name, len(split), split.num_truncated, config.data.max_length)
    buckets = data.make_buckets(config.data.max_length, tuple(config.data.buckets))
    return Experiment(config, config.task, vocab, tokenizer, encoded, buckets, data.pad_token_id(tokenizer), model)
