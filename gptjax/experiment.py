"""From a config to what training needs: the data, its label vocabulary, a tokenizer and a model.

Data flows one way: config -> (splits, labels, tokenizer) -> encoded splits + model -> train.py.
How each step goes for the config's task is that task's entry in gptjax/tasks.py.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any


from gptjax import artifact, partition, tasks
from gptjax.config import check_compatible, check_generation, model_overrides
from gptjax.data.batching import buckets_for
from gptjax.data.encode import EncodedSplit, pad_token_id
from gptjax.data.examples import CompletionExample
from gptjax.data.labels import IGNORE_INDEX, LabelVocab
from gptjax.data.sources import hub_failure, is_hub_id, load_data, use_cache_only_if_hub_unreachable
from gptjax.errors import CheckpointError, ConfigError, DataError, SetupError
from gptjax.hf import from_pretrained, resolve_checkpoint
from gptjax.model import GPT2, GPT2Config, init_model
from gptjax.tokenizer import load_run_tokenizer, load_tokenizer, tokenizer_fingerprint, train_tokenizer

log = logging.getLogger("gptjax")
@dataclasses.dataclass
class Experiment:
    config: Any
    task: tasks.Task
    vocab: LabelVocab
    tokenizer: Any
    encoded: dict[str, EncodedSplit]
    buckets: tuple[int, ...]
    pad_id: int
    model: GPT2 | None = None
    fingerprint: dict | None = None  # artifact.data_fingerprint of the splits


def tokenizer_for(config, train_examples, model_dir: Path | None):
    """The tokenizer: trained on the train split, named in the config, or the checkpoint's own."""
    cfg = config.tokenizer
    task = tasks.get(config.task)
    if cfg.name_or_path == "train":
        return train_tokenizer(task.texts(train_examples), cfg.vocab_size, task.prefix_space)
    name = cfg.name_or_path or str(model_dir or config.model.name_or_path)
    try:
        return load_tokenizer(name, task.prefix_space)
    except Exception as e:  # noqa: BLE001
        raise SetupError(hub_failure("tokenizer.name_or_path", name, e)) from e


def build_model(config, vocab: LabelVocab, tokenizer, model_dir: Path | None) -> GPT2:
    cfg = config.model
    head = tasks.get(config.task).head
    if cfg.init == "scratch":
        arch = {k: v for k, v in cfg.arch.items() if v is not None}
        base = GPT2Config.named(cfg.name_or_path) if cfg.name_or_path else GPT2Config()
        special = tokenizer.eos_token_id
        try:
            model_config = base.replace(
                vocab_size=len(tokenizer), bos_token_id=special, eos_token_id=special, **arch, **model_overrides(config)
            )
        except ConfigError as e:
            raise ConfigError(f"model.arch: {e} (model.name_or_path={cfg.name_or_path!r} with {arch})") from None
        model = init_model(model_config, head, labels=vocab.names, seed=config.train.seed)
    elif cfg.init == "pretrained":
        model = from_pretrained(
            str(model_dir), head, labels=vocab.names, reinit_head=cfg.reinit_head,
            seed=config.train.seed, **model_overrides(config),
        )
    else:
        raise ConfigError(f"model.init={cfg.init!r}: choose 'pretrained' or 'scratch'")
    return partition.adapt(model, config)  # LoRA adapters, or the top_k split checked


def checkpoint_dir(config) -> Path | None:
    """The pretrained checkpoint as a local directory (fetched first, so a missing one fails fast)."""
    if config.model.init != "pretrained":
        return None
    try:
        return resolve_checkpoint(config.model.name_or_path)
    except CheckpointError as e:
        raise SetupError(hub_failure("model.name_or_path", config.model.name_or_path, e)) from e


def encode(config, splits, tokenizer, vocab) -> dict[str, EncodedSplit]:
    """Every split tokenised, with labels aligned, as training and evaluation read them."""
    task = tasks.get(config.task)
    return {name: task.encode(examples, tokenizer, vocab, config.data) for name, examples in splits.items()}


def prepare(config, workdir, new_run: bool = False) -> Experiment:
    """Loads and checks the data, the label vocabulary, the tokenizer and the model, and tokenises
    every split: all before any training starts.

    Nothing is written: every check that may refuse the command runs here or before. Resuming
    a run (WORKDIR/run.json exists) refuses data other than the run started with, and uses the
    run's own tokenizer (one trained on the fly is not trained again); a named tokenizer
    that differs from the run's is refused.
    """
    task = tasks.get(config.task)
    task.check_config(config)
    saved = None if new_run else artifact.existing_run(workdir, config)  # new_run: the workdir's run is moved aside
    sources = [config.data.source, config.tokenizer.name_or_path]
    if config.model.init == "pretrained":
        sources.append(config.model.name_or_path)
    if any(is_hub_id(name) for name in sources):
        use_cache_only_if_hub_unreachable()
    pretrained = checkpoint_dir(config)
    splits = load_data(config)
    fingerprint = artifact.data_fingerprint(splits)
    if saved is not None:
        artifact.check_same_data(saved["data"], fingerprint, workdir)
    vocab = task.vocab(splits["train"])
    if saved is not None:
        check_compatible(saved, config, vocab.names, workdir / artifact.RUN_FILE)
    splits = task.check_labels(splits, vocab, config.data.unknown_label)
    if saved is not None and config.tokenizer.name_or_path == "train":
        tokenizer = load_run_tokenizer(workdir / artifact.TOKENIZER_DIR, task.prefix_space)
    else:
        tokenizer = tokenizer_for(config, splits["train"], pretrained)
    if saved is not None and tokenizer_fingerprint(tokenizer) != saved["tokenizer"]:
        raise ConfigError(f"{workdir}: tokenizer {config.tokenizer.name_or_path or config.model.name_or_path!r} is "
                          "not the one the run started with; resume needs the same tokenizer (or a new --workdir)")
    model = build_model(config, vocab, tokenizer, pretrained)
    if config.data.max_length > model.config.n_positions:
        raise ConfigError(f"data.max_length={config.data.max_length} exceeds the model's n_positions={model.config.n_positions}")
    if any(isinstance(ex, CompletionExample) for ex in splits["validation"][:1]):
        check_generation(config, model.config.n_positions)  # validation scores greedy completions
    encoded = encode(config, splits, tokenizer, vocab)
    for name, split in encoded.items():
        log.info("%s: %d rows, %d truncated to %d tokens", name, len(split), split.num_truncated, config.data.max_length)
    train = encoded["train"]
    if train.per_token and not any((labels != IGNORE_INDEX).any() for labels in train.labels):
        raise DataError(f"the train split has no labelled token left within data.max_length="
                        f"{config.data.max_length} (truncation cut every label away); raise data.max_length")
    return Experiment(config, task, vocab, tokenizer, encoded, buckets_for(config.data), pad_token_id(tokenizer), model,
                      fingerprint)
