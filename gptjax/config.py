"""Configs as code: every run's settings in one ml_collections ConfigDict.

gptjax/configs/NAME.py holds get_config(), starting from base_config() here; the command line
resolves --config=NAME to that file and applies --config.a.b=value overrides, typed by the field they set.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import logging
import math
from pathlib import Path

from ml_collections import ConfigDict, config_dict

from gptjax.errors import ConfigError

log = logging.getLogger("gptjax")

# Inside the package, so a checkout, an editable install and a wheel all find them the same way.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def base_config() -> ConfigDict:
    """Every key a run reads, with defaults; named configs change some of them."""
    c = ConfigDict()
    c.task = "token"  # "token" (NER), "tagging" (POS), "sequence" (sentiment, topic) or "causal_lm" (gptjax/tasks.py)

    c.model = ConfigDict()
    c.model.name_or_path = "gpt2"  # hub id or local directory; for init="scratch", a size name
    c.model.init = "pretrained"  # or "scratch": random initialisation, as Hugging Face does
    c.model.reinit_head = False  # start a new head even if the checkpoint stores one
    c.model.dtype = "float32"  # compute dtype; parameters and optimizer state stay float32
    c.model.attention = "xla"  # or "cudnn": cuDNN flash attention (NVIDIA GPU, bf16/fp16, no attention dropout in training) or an error
    # Recompute each block in the backward pass: less activation memory, more FLOPs. None: only where
    # the train step would not fit the device's memory without it (a TPU's or GPU's, found by compiling).
    c.model.remat = config_dict.placeholder(bool)
    c.model.unroll = config_dict.placeholder(int)  # blocks per layer-scan iteration; None: all on a CPU without remat, else 1
    c.model.dropout = config_dict.placeholder(float)  # None: the checkpoint's own dropouts
    c.model.arch = ConfigDict()  # for init="scratch": changes to the named size
    for key in ("n_layer", "n_embd", "n_head", "n_positions"):
        c.model.arch[key] = config_dict.placeholder(int)

    c.tokenizer = ConfigDict()
    c.tokenizer.name_or_path = config_dict.placeholder(str)  # None: model.name_or_path; "train": BPE on the train split
    c.tokenizer.vocab_size = 1000  # for name_or_path="train"

    c.data = ConfigDict()
    c.data.source = config_dict.placeholder(str)  # hub dataset id, local directory, or "synthetic"
    c.data.hub_config = config_dict.placeholder(str)  # datasets.load_dataset's second argument
    c.data.text_column = config_dict.placeholder(str)  # None: "text" or "sentence" (causal_lm: "text", or prompt/completion)
    c.data.label_column = config_dict.placeholder(str)  # None: "tags" / "ner_tags" (token), "label" (sequence)
    c.data.max_length = 128  # tokens per example; longer ones are cut (training) or flagged (predict)
    c.data.buckets = (32, 64, 128, 256, 512)  # capped at max_length
    c.data.iob1_to_iob2 = False  # convert IOB1 tags (CoNLL-2003's original files) to IOB2
    c.data.label_names = config_dict.placeholder(tuple)  # names of integer label ids in the data (id = position)
    c.data.label_all_subwords = False  # token tasks: label every subword, not only each word's first
    c.data.test_split = "test"  # "validation" where the test labels are hidden (GLUE)
    c.data.unknown_label = "error"  # or "map_to_o" (token tasks): a tag training never saw
    c.data.synthetic_seed = 0  # for data.source="synthetic"
    c.data.synthetic_sizes = (2000, 400, 400)  # train / validation / test examples (causal_lm: documents)

    c.train = ConfigDict()
    c.train.seed = 0  # initialisation, dropout and batch order
    c.train.batch_size = 16  # examples per optimizer step, over all devices
    c.train.eval_batch_size = 32  # examples per evaluation and prediction step
    c.train.grad_accum_steps = 1  # micro-batches per optimizer step (batch_size is the total)
    c.train.num_epochs = 5  # passes over the train split
    c.train.max_steps = config_dict.placeholder(int)  # an optional cap on optimizer steps
    c.train.learning_rate = 2e-5  # AdamW's peak, reached at the end of the linear warm-up
    c.train.schedule = "linear"  # after warm-up: "linear" or "cosine" decay to 0 at the last step, or "constant"
    c.train.warmup_ratio = 0.1  # warm-up steps as a share of all steps
    c.train.warmup_steps = config_dict.placeholder(int)  # overrides warmup_ratio
    c.train.weight_decay = 0.01  # AdamW's, on matrices and embeddings only (not biases, LayerNorms)
    c.train.max_grad_norm = 1.0  # clip the global gradient norm to this; 0: no clipping
    c.train.adam_b1 = 0.9  # AdamW's moment decay rates and epsilon
    c.train.adam_b2 = 0.999
    c.train.adam_eps = 1e-8
    c.train.patience = config_dict.placeholder(int)  # early stopping: evaluations without gain; None = off
    c.train.log_every = 50  # steps between log lines and metrics.jsonl entries
    c.train.eval_every_steps = config_dict.placeholder(int)  # validation also every N steps (best model, patience)
    # Where metrics and the config go besides metrics.jsonl: "tensorboard" (WORKDIR/tensorboard) and
    # "wandb" (Weights & Biases: pip install 'gptjax[wandb]'; WANDB_PROJECT, WANDB_MODE=offline...).
    c.train.report_to = ("tensorboard",)
    # Which parameters train (gptjax/partition.py): "none" (all of them), "head_only" (the task head), or
    # "top_k" (the top train.trainable_blocks blocks, the final LayerNorm and the head).
    c.train.freeze = "none"
    c.train.trainable_blocks = config_dict.placeholder(int)  # K, for freeze="top_k"

    # LoRA adapters on the blocks' projections (rank 0: off). Only the adapters and the task head
    # train; exports fold them into the weights (W + alpha / rank * A B).
    c.lora = ConfigDict()
    c.lora.rank = 0  # adapter rank; 0: no LoRA
    c.lora.alpha = 16.0  # the adapters' update is scaled by alpha / rank
    c.lora.dropout = 0.0  # on the adapters' input
    c.lora.targets = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the projections adapted

    c.mesh = ConfigDict()  # devices per axis; -1 takes the devices left over (see sharding.py)
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # Decoding (--mode=generate; --mode=benchmark --benchmark=generate times these shapes).
    c.generate = ConfigDict()
    c.generate.max_new_tokens = 64  # tokens generated at most per prompt
    c.generate.temperature = 0.0  # 0: greedy
    c.generate.top_k = 0  # 0: off
    c.generate.top_p = 1.0  # 1: off
    c.generate.seed = 0  # sampling's seed (greedy ignores it)
    c.generate.stop = ()  # strings that end a completion (cut before them)
    c.generate.batch_size = 16  # prompts decoded together
    c.generate.prompt_length = 128  # benchmark: prompt tokens

    c.checkpoint = ConfigDict()
    c.checkpoint.every_steps = 500  # and at each epoch end
    c.checkpoint.keep = 3  # newest checkpoints kept (best/ is kept apart)
    c.checkpoint.resume = True  # the same command on the same workdir continues the run
    return c


def load_config(name: str) -> ConfigDict:
    """gptjax/configs/NAME.py's get_config(), or a path to such a file."""
    path = Path(name)
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_")))
        raise ConfigError(f"--config={name}: no such config file {path} (known configs: {known})")
    spec = importlib.util.spec_from_file_location(f"gptjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - whatever the file's own code raises
        raise ConfigError(f"{path}: raised {_where(e, path)}{type(e).__name__}: {e}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path}: defines no get_config(); a config file returns its ConfigDict from get_config()")
    try:
        config = module.get_config()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: get_config() raised {_where(e, path)}{type(e).__name__}: {e}") from None
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"{path}: get_config() returned a {type(config).__name__}, not an ml_collections ConfigDict "
                          "(start from gptjax.config.base_config())")
    return config


def _where(error: Exception, path: Path) -> str:
    """'at line N: ' for the innermost frame of `error` in the config file."""
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    return f"at line {lines[-1]}: " if lines else ""


def _parse(key: str, text: str, current, field_type):
    """The override's value, of the type of the field it replaces."""
    kind = field_type or type(current)
    try:
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError("expected true or false")
        if kind in (tuple, list):
            return kind(_parse_list(key, text, current))
        if kind is float:
            return float(text)
        if kind is int:
            return int(text)
        return kind(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"--config.{key}={text}: not a valid {kind.__name__} ({e})") from None


# What each tuple key holds, for comma lists and for the error that shows the form.
LIST_ITEMS = {"data.buckets": (int, "64,128,256"), "data.label_names": (str, "O,B-PER,I-PER"),
              "lora.targets": (str, "attn.c_attn,mlp.c_fc"), "generate.stop": (str, r"'\n\n',###")}


def _parse_list(key: str, text: str, current=None) -> list:
    """A comma list (`64,128`; `a,b`; an item may be quoted in '...' to hold a comma, and
    backslash escapes such as \\n are read as in Python; nothing at all is an empty list), or a
    Python literal (`(64, 128)`, `('a', 'b')`)."""
    default = (type(current[0]), ",".join(map(str, current))) if current else (str, "a,b")
    item_type, example = LIST_ITEMS.get(key, default)
    form = f"a comma list of {'integers' if item_type is int else 'strings'}, e.g. --config.{key}={example}"
    text = text.strip()
    try:
        if text[:1] in ("(", "["):
            value = ast.literal_eval(text)
            items = list(value) if isinstance(value, (tuple, list)) else [value]
        else:
            items = [_unescape(part) for part in next(csv.reader([text], quotechar="'", skipinitialspace=True, strict=True))] \
                if text else []
        if item_type is int:
            items = [int(item) if not isinstance(item, (bool, float)) else item for item in items]
        if not all(type(item) is item_type for item in items):
            raise ValueError
    except (ValueError, SyntaxError, csv.Error):
        raise ValueError(f"expected {form}") from None
    return items


def _unescape(item: str) -> str:
    if "\\" not in item:
        return item
    return item.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _optional(key: str) -> bool:
    """Whether base_config() declares the key optional (a placeholder whose default is None)."""
    node = base_config()
    for part in key.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return node is None


def apply_overrides(config: ConfigDict, overrides: dict[str, str]) -> ConfigDict:
    """Sets --config.a.b=value overrides; an unknown key or a wrongly typed value is an error naming it."""
    for key, text in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if not isinstance(node, ConfigDict) or part not in node:
                raise ConfigError(f"--config.{key}: unknown key {'.'.join(parents[: i + 1])!r}")
            node = node[part]
        if not isinstance(node, ConfigDict) or leaf not in node:
            choices = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else ""
            raise ConfigError(f"--config.{key}: unknown key (this section has: {choices})")
        if isinstance(node[leaf], ConfigDict):
            raise ConfigError(f"--config.{key}: is a section; set one of its keys instead")
        if text.lower() in ("none", "null"):
            if not _optional(key):
                raise ConfigError(f"--config.{key}: cannot be None")
            node[leaf] = None
            continue
        node[leaf] = _parse(key, text, node[leaf], node.get_type(leaf))
    return config


# Ranges of the numeric keys: (key, lowest, lowest allowed?, highest, highest allowed?). None: open.
RANGES = (
    ("data.max_length", 1, True, None, None),
    ("train.batch_size", 1, True, None, None),
    ("train.eval_batch_size", 1, True, None, None),
    ("train.grad_accum_steps", 1, True, None, None),
    ("train.num_epochs", 1, True, None, None),
    ("train.max_steps", 1, True, None, None),
    ("train.learning_rate", 0, False, None, None),
    ("train.warmup_ratio", 0, True, 1, True),
    ("train.warmup_steps", 0, True, None, None),
    ("train.weight_decay", 0, True, None, None),
    ("train.max_grad_norm", 0, True, None, None),
    ("train.adam_b1", 0, True, 1, False),
    ("train.adam_b2", 0, True, 1, False),
    ("train.adam_eps", 0, False, None, None),
    ("train.patience", 1, True, None, None),
    ("train.log_every", 1, True, None, None), ("train.eval_every_steps", 1, True, None, None),
    ("train.trainable_blocks", 1, True, None, None),
    ("model.dropout", 0, True, 1, False),
    ("model.unroll", 1, True, None, None),
    ("lora.rank", 0, True, None, None),
    ("lora.alpha", 0, False, None, None),
    ("lora.dropout", 0, True, 1, False),
    ("checkpoint.every_steps", 1, True, None, None),
    ("generate.max_new_tokens", 1, True, None, None),
    ("generate.temperature", 0, True, None, None),
    ("generate.top_k", 0, True, None, None),
    ("generate.top_p", 0, False, 1, True),
    ("generate.batch_size", 1, True, None, None),
    ("generate.prompt_length", 1, True, None, None),
    ("checkpoint.keep", 1, True, None, None),
    ("tokenizer.vocab_size", 1, True, None, None),
    ("model.arch.n_layer", 1, True, None, None),
    ("model.arch.n_embd", 1, True, None, None),
    ("model.arch.n_head", 1, True, None, None),
    ("model.arch.n_positions", 1, True, None, None),
    ("train.seed", 0, True, 2**63, False),
    ("data.synthetic_seed", 0, True, 2**63, False),
    ("generate.seed", 0, True, 2**63, False),
)
CHOICES = (
    ("model.init", ("pretrained", "scratch")),
    ("model.attention", ("xla", "cudnn")),
    ("model.dtype", ("float32", "bfloat16", "float16")),
    ("data.test_split", ("test", "validation")),
    ("data.unknown_label", ("error", "map_to_o")),
    ("train.freeze", ("none", "head_only", "top_k")),
    ("train.schedule", ("linear", "cosine", "constant")),
)


def _get(config: ConfigDict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def validate(config: ConfigDict) -> ConfigDict:
    """Refuses, naming the key, a value no run can use: a size, count or rate out of its range,
    a choice not among the known ones. Runs before anything is loaded."""
    for key, low, low_ok, high, high_ok in RANGES:
        value = _get(config, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value}: must be a finite number")
        too_low = value < low if low_ok else value <= low
        too_high = high is not None and (value > high if high_ok else value >= high)
        if too_low or too_high:
            bounds = f"{'>=' if low_ok else '>'} {low}" + (f" and {'<=' if high_ok else '<'} {high}" if high is not None else "")
            raise ConfigError(f"{key}={value}: must be {bounds}")
    for key, choices in CHOICES:
        if _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r}: choose one of {', '.join(choices)}")
    train, lora = config.train, config.lora
    k = train.trainable_blocks
    if train.freeze == "top_k" and k is None:
        raise ConfigError(f"train.freeze='top_k' needs train.trainable_blocks=K >= 1 (the top K blocks train); got {k}")
    if train.freeze != "top_k" and k is not None:
        raise ConfigError(f"train.trainable_blocks={k} applies only with train.freeze='top_k' (it is {train.freeze!r})")
    if lora.rank and train.freeze != "none":
        raise ConfigError(
            f"lora.rank={lora.rank} with train.freeze={train.freeze!r}: LoRA already freezes the whole base model "
            "(only the adapters and the head train); leave train.freeze='none', or set lora.rank=0"
        )
    targets, known = tuple(lora.targets), base_config().lora.targets  # the default adapts every projection
    if lora.rank and (not targets or any(t not in known for t in targets) or len(set(targets)) != len(targets)):
        raise ConfigError(f"lora.targets={targets}: name each of {', '.join(known)} at most once, and at least one")
    stops = tuple(config.generate.stop)
    if any(not isinstance(stop, str) or not stop for stop in stops):
        raise ConfigError(f"generate.stop={stops!r}: stop strings must be non-empty text")
    arch = config.model.arch
    if arch.n_embd is not None and arch.n_head is not None and arch.n_embd % arch.n_head:
        raise ConfigError(f"model.arch.n_embd={arch.n_embd} is not divisible by model.arch.n_head={arch.n_head}")
    buckets = tuple(config.data.buckets)
    if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
        raise ConfigError(f"data.buckets={buckets}: must be positive token counts")
    return config


def check_generation(config: ConfigDict, n_positions: int, prompt_length: int = 1) -> None:
    """Refuses generate.max_new_tokens that, after `prompt_length` tokens of prompt, do not fit
    the model's n_positions (longer prompts are cut to leave the room; one token is the least)."""
    g = config.generate
    if prompt_length + g.max_new_tokens > n_positions:
        if prompt_length > 1:
            raise ConfigError(f"generate.prompt_length={prompt_length} + generate.max_new_tokens={g.max_new_tokens} "
                              f"exceed the model's n_positions={n_positions}; lower them (together at most "
                              f"{n_positions})")
        raise ConfigError(f"generate.max_new_tokens={g.max_new_tokens} leaves no room for a prompt in the model's "
                          f"n_positions={n_positions}; lower it (at most {n_positions - 1})")


def check_platform(config: ConfigDict, training: bool = True) -> None:
    """Refuses what the devices here cannot compute (it starts JAX), and float16 gradients: no loss scaling."""
    import jax
    if config.model.dtype == "float16" and (training or jax.default_backend() == "cpu"):
        raise ConfigError("model.dtype='float16' cannot train (no loss scaling): use bfloat16" if training else
                          "model.dtype='float16': XLA:CPU has no float16 matmul; on a CPU use bfloat16 (or float32)")


# ---------------------------------------------------------------------------------------------
# What a trained run is made of, and what may change when it is used again

# Config keys a resumed run must share with its checkpoint: they fix the model's shape, the labels, or the batch
# order. Any other may change; a changed optimizer or schedule length is logged (steps.schedule_changes).
MUST_MATCH = (
    "task", "model.name_or_path", "model.init", "model.arch", "tokenizer.name_or_path",
    "tokenizer.vocab_size", "data.source", "data.hub_config", "data.max_length", "data.buckets",
    "data.label_all_subwords", "data.synthetic_seed", "data.synthetic_sizes", "train.seed", "train.batch_size",
    "train.freeze", "train.trainable_blocks", "lora.rank", "lora.alpha", "lora.targets",
)

# Keys that say how to run a trained model, not what it is: a reading mode may change them.
USE_TIME_KEYS = (
    "model.dtype", "model.attention", "model.unroll", "data.max_length", "data.buckets", "train.eval_batch_size",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "generate.max_new_tokens", "generate.temperature", "generate.top_k",
    "generate.top_p", "generate.seed", "generate.stop", "generate.batch_size", "generate.prompt_length",
)


def model_overrides(config: ConfigDict) -> dict:
    """The model.* keys that change a GPT2Config (of a checkpoint, or a named size)."""
    cfg = config.model
    changes = {"dtype": cfg.dtype, "attention": cfg.attention, "remat": bool(cfg.remat), "unroll": cfg.unroll}
    if cfg.dropout is not None:
        changes.update(resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
    return changes


def config_json(config: ConfigDict) -> dict:
    """The config as plain JSON values (tuples become lists), comparable across runs."""
    return json.loads(config.to_json())


_MISSING = object()


def config_from_json(saved: dict, where: str) -> ConfigDict:
    """base_config() with the saved values (config_json's dict, read from `where`) set: tuples
    stay tuples, placeholders stay typed."""
    config = base_config()

    def fill(node: ConfigDict, values: dict, prefix: str):
        for key, value in values.items():
            if key not in node:
                log.warning("%s: unknown config key %s%s ignored (made by another gptjax version)", where, prefix, key)
                continue
            if isinstance(node[key], ConfigDict):
                fill(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

    fill(config, saved, "")
    return config


def lookup(tree: dict, key: str, missing=None):
    """The value of a dotted key (model.arch.n_layer) in config_json's dict; `missing` if absent."""
    for part in key.split("."):
        tree = tree.get(part, missing) if isinstance(tree, dict) else missing
    return tree


def check_compatible(saved: dict, config: ConfigDict, labels: list[str] | None, where) -> None:
    """Refuses a checkpoint (or run.json) that disagrees with the run where it matters; labels None: not yet known."""
    current = config_json(config)
    defaults = None
    for key in MUST_MATCH:
        before, now = lookup(saved["config"], key, _MISSING), lookup(current, key)
        if before is _MISSING:  # a key newer than the checkpoint: it was made with the default
            defaults = defaults or config_json(base_config())
            before = lookup(defaults, key)
        if isinstance(before, dict) and isinstance(now, dict) and before != now:  # name the sub-key: model.arch.n_layer
            key, before, now = next((f"{key}.{k}", before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
                                    if before.get(k) != now.get(k))
        if before != now:
            raise ConfigError(
                f"{where}: the run was made with {key}={before!r} but this command has {key}={now!r}; "
                f"resume with {key}={before!r}, or train with the new value in another --workdir (or here with "
                "--start_over, which moves this run aside)"
            )
    if labels is not None and saved["labels"] != list(labels):
        raise ConfigError(f"{where}: the run's labels {saved['labels']} differ from this data's {list(labels)}; "
                          "resume needs the labels it started with (or train in another --workdir)")


def apply_use_time(config: ConfigDict, overrides: dict[str, str]) -> ConfigDict:
    """Applies --config.KEY=VALUE overrides to a trained run's config. Keys that describe the
    trained model itself may be repeated with the run's own values (a training command with
    --mode=eval added works) but not changed."""
    before = config_json(config)
    config = apply_overrides(config, overrides)
    after = config_json(config)
    for key in sorted(overrides):
        if key in USE_TIME_KEYS:
            continue
        was, now = lookup(before, key), lookup(after, key)
        if was != now:
            raise ConfigError(f"--config.{key}={overrides[key]}: the trained run has {key}={was!r}, which a reading "
                              f"mode cannot change (it may change: {', '.join(USE_TIME_KEYS)})")
    check_platform(validate(config), training=False)  # the one validation every reading mode's config goes through
    return config
