"""A trained run as an artifact: what training writes so that nothing else is needed to use it,
and the one loader that reads it back (a workdir or an export in; model, tokenizer, labels and
config out). eval, export, predict and resume all go through here; none of them reads training
data or trains a tokenizer again, and the modes that only read a workdir write nothing into it.

WORKDIR/run.json     the resolved config, the model's architecture, the labels, and fingerprints
                     of the data and the tokenizer (resume refuses either changed)
WORKDIR/tokenizer/   the tokenizer, as transformers saves it
WORKDIR/labels.json  the label names (id = position); not written for a task without labels
                     (causal_lm)
WORKDIR/base/        the frozen parameters, when only part of the model trains (LoRA, freeze):
                     checkpoints hold what trains, so the rest is kept once, here
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from gptjax import peft, sharding, steps as steps_lib, tasks, workdir as wd
from gptjax.checkpoint import Checkpoints, _lookup, config_json
from gptjax.config import ConfigError, base_config
from gptjax.hf import CONFIG, CheckpointError, from_pretrained, resolve_checkpoint
from gptjax.model import GPT2Config, init_model

log = logging.getLogger("gptjax")

RUN_FILE = "run.json"
TOKENIZER_DIR = "tokenizer"
LABELS_FILE = "labels.json"
BASE_DIR = "base"
EXPORT_RUN_FILE = "gptjax.json"  # in an export: the run's config, so it predicts with the same shapes
FORMAT = 1

# Keys that say how to run a trained model, not what it is: a reading mode may change them.
USE_TIME_KEYS = (
    "model.dtype", "model.attention", "model.unroll", "data.max_length", "data.buckets", "train.eval_batch_size",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "generate.max_new_tokens", "generate.temperature", "generate.top_k",
    "generate.top_p", "generate.seed", "generate.stop", "generate.batch_size", "generate.prompt_length",
)


# ---------------------------------------------------------------------------------------------
# Fingerprints


def data_fingerprint(splits: dict[str, list]) -> dict[str, dict]:
    """Per split, the number of examples and a hash of their contents (words and tags, text and
    label, a document, or a prompt and completion): the same whether the data came from files,
    the hub or a synthetic corpus."""
    out = {}
    for name, examples in sorted(splits.items()):
        h = hashlib.sha256()
        for ex in examples:
            h.update(json.dumps(ex.content(), ensure_ascii=False).encode("utf-8") + b"\n")
        out[name] = {"examples": len(examples), "sha256": h.hexdigest()}
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_same_data(saved: dict, current: dict, workdir) -> None:
    """Refuses to resume on data other than the run started with, naming the split."""
    for name in sorted(set(saved) | set(current)):
        before, now = saved.get(name), current.get(name)
        if before == now:
            continue
        if before is None or now is None:
            change = "appeared" if before is None else "is gone"
        elif before["examples"] != now["examples"]:
            change = f"has {now['examples']} examples, {before['examples']} when the run started"
        else:
            change = f"has the same number of examples ({now['examples']}) but different contents"
        raise ConfigError(f"{workdir}: the {name} split {change}; resume needs the data the run started with "
                          "(restore it, or train in a new --workdir)")


# ---------------------------------------------------------------------------------------------
# Writing


def save_run(workdir: epath.Path, config, model, tokenizer, labels: list[str], fingerprint: dict, frozen) -> None:
    """Writes run.json, the tokenizer, labels.json and (if anything is frozen) the frozen base.
    Process 0 writes the files; every process takes part in the base's Orbax save."""
    if frozen and not (workdir / BASE_DIR).exists():
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(workdir / BASE_DIR, frozen)
        checkpointer.wait_until_finished()
        checkpointer.close()
    if jax.process_index() != 0:
        return
    _save_tokenizer(tokenizer, workdir / TOKENIZER_DIR)
    if labels:
        wd.write_json(workdir / LABELS_FILE, {"names": list(labels)})
    wd.write_json(workdir / RUN_FILE, {
        "format": FORMAT,
        "task": config.task,
        "labels": list(labels),
        "model_config": dataclasses.asdict(model.config),
        "config": config_json(config),
        "data": fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "base": peft.checksum(frozen),
    })


def _save_tokenizer(tokenizer, directory: epath.Path) -> None:
    with wd.atomic_dir(directory) as tmp:
        tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class Trained:
    """A trained model ready to use: its config (the run's, with use-time keys changed), task,
    labels ([] for causal_lm), tokenizer, and the model on a mesh with its steps (steps.Steps)."""

    config: Any
    task: tasks.Task
    labels: list[str]
    tokenizer: Any
    steps: steps_lib.Steps
    source: str  # where it came from, for messages
    tokenizer_dir: str = ""  # where the tokenizer's files are (generation loads it without a prefix space)

    @property
    def model(self):
        return self.steps.model()


def config_from_json(saved: dict) -> ConfigDict:
    """base_config() with the saved values set (tuples stay tuples, placeholders stay typed)."""
    config = base_config()

    def fill(node: ConfigDict, values: dict, prefix: str):
        for key, value in values.items():
            if key not in node:
                log.warning("%s: unknown config key %s%s ignored (made by another gptjax version)", RUN_FILE, prefix, key)
                continue
            if isinstance(node[key], ConfigDict):
                fill(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

    fill(config, saved, "")
    return config


def apply_use_time(config: ConfigDict, overrides: dict[str, str]) -> ConfigDict:
    """Applies --config.KEY=VALUE overrides to a trained run's config. Keys that describe the
    trained model itself may be repeated with the run's own values (a training command with
    --mode=eval added works) but not changed."""
    from gptjax.config import apply_overrides

    before = config_json(config)
    config = apply_overrides(config, overrides)
    after = config_json(config)
    for key in sorted(overrides):
        if key in USE_TIME_KEYS:
            continue
        was, now = _lookup(before, key), _lookup(after, key)
        if was != now:
            raise ConfigError(f"--config.{key}={overrides[key]}: the trained run has {key}={was!r}, which a reading "
                              f"mode cannot change (it may change: {', '.join(USE_TIME_KEYS)})")
    return config



def is_run(directory) -> bool:
    return (epath.Path(directory) / RUN_FILE).exists()


def load(source, which: str = "best", overrides: dict[str, str] | None = None, *, head: str | None = None) -> Trained:
    """A trained workdir (its best model, or its latest checkpoint) or an export directory."""
    directory = wd.path(source, "--workdir")
    if not directory.exists():
        if wd.is_local(directory) and not str(source).startswith((".", "/", "~")) and str(source).count("/") <= 1:
            # A hub id (gpt2, openai-community/gpt2): fetched, or read from huggingface_hub's cache.
            return load_export(resolve_checkpoint(str(source)), overrides or {}, head=head)
        raise wd.WorkdirError(f"{directory}: no such directory")
    if is_run(directory):
        return _load_workdir(directory, which, overrides or {})
    if (directory / CONFIG).exists():
        return load_export(directory, overrides or {}, head=head)
    if (directory / "export" / CONFIG).exists():
        return load_export(directory / "export", overrides or {}, head=head)
    raise wd.WorkdirError(f"{directory}: neither a trained workdir (no {RUN_FILE}) nor an export (no {CONFIG})")


def _abstract(run: dict, config) -> tuple[Any, nnx.State]:
    """The trained model's structure and abstract parameters, built from run.json alone."""
    task = tasks.get(run["task"])
    model_config = GPT2Config(**run["model_config"]).replace(dtype=config.model.dtype,
                                                             attention=config.model.attention)
    model = nnx.eval_shape(lambda: peft.adapt(init_model(model_config, task.head, labels=run["labels"]), config))
    return nnx.split(model)


def _on_mesh(tree, mesh):
    shardings = sharding.shardings_for(tree, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _load_workdir(workdir: epath.Path, which: str, overrides: dict) -> Trained:
    run = wd.read_json(workdir / RUN_FILE, "run record")
    config = apply_use_time(config_from_json(run["config"]), overrides)
    mesh = sharding.make_mesh(config.mesh)
    graphdef, params = _abstract(run, config)
    partition = peft.partition(config, nnx.merge(graphdef, params))
    trainable, frozen = partition.split(_on_mesh(params, mesh))
    trainable = _restore_trainable(workdir, which, trainable, config)
    if frozen:
        try:
            frozen = ocp.StandardCheckpointer().restore(workdir / BASE_DIR, frozen)
        except Exception as e:  # noqa: BLE001 - any failure to read means the base is unusable
            raise CheckpointError(f"{workdir / BASE_DIR}: the frozen base model cannot be read "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        peft.check_base(run.get("base"), peft.checksum(frozen), workdir / BASE_DIR)
    task = tasks.get(run["task"])
    tokenizer = load_tokenizer(workdir / TOKENIZER_DIR, task.prefix_space)
    steps = steps_lib.inference_steps(graphdef, partition, mesh, trainable, frozen)
    sharding.check_batch_size(config.train.eval_batch_size, mesh, "train.eval_batch_size")
    _check_max_length(config, graphdef, params)
    return Trained(config, task, list(run["labels"]), tokenizer, steps, str(workdir), str(workdir / TOKENIZER_DIR))


def _check_max_length(config, graphdef, params) -> None:
    n_positions = nnx.merge(graphdef, params).config.n_positions
    if config.data.max_length > n_positions:
        raise ConfigError(f"data.max_length={config.data.max_length} exceeds the model's n_positions={n_positions}")


def _restore_trainable(workdir, which: str, target, config):
    """The trained parameters of the best model or the latest checkpoint; no optimizer state
    is built or read."""
    if which not in ("best", "latest"):
        raise ConfigError(f"--checkpoint={which}: choose best or latest")
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        if which == "best":
            restored = checkpoints.restore_best(target)
            if restored is None:
                raise CheckpointError(f"{checkpoints.best_directory}: no best model in it (no epoch has been "
                                      "evaluated yet); use --checkpoint=latest")
            log.info("the best model: epoch %d", restored[1]["epoch"] + 1)
            return restored[0]
        tx, _ = steps_lib.make_optimizer(config.train, 1)
        step = jax.ShapeDtypeStruct((), "int32")
        restored = checkpoints.restore_latest_params(steps_lib.TrainState(step, target, jax.eval_shape(tx.init, target)))
        if restored is None:
            raise CheckpointError(f"{checkpoints.directory}: no readable checkpoint in it")
        log.info("the latest checkpoint: step %d", restored[1])
        return restored[0]
    finally:
        checkpoints.close()


def load_tokenizer(directory, add_prefix_space: bool = True):
    """A saved tokenizer, with the task's add_prefix_space (tasks.Task.prefix_space)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), add_prefix_space=add_prefix_space)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a bad directory
        raise CheckpointError(f"{directory}: the tokenizer cannot be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None


def load_export(model_dir, overrides: dict | None = None, *, head: str | None = None) -> Trained:
    """An exported Hugging Face directory: config.json names the task (by its architecture) and
    the labels; the run's config, if the export carries one, sets lengths and batch sizes."""
    model_dir = epath.Path(model_dir)
    hf_config = wd.read_json(model_dir / CONFIG, "model config")
    architectures = hf_config.get("architectures") or []
    task = tasks.by_architecture(architectures, head)
    if task is None:
        raise CheckpointError(f"{model_dir / CONFIG}: architectures {architectures} is not one gptjax can use "
                              f"({', '.join(tasks.architectures())})")
    saved = model_dir / EXPORT_RUN_FILE
    config = config_from_json(wd.read_json(saved, "run config")) if saved.exists() else base_config()
    config.task = task.name
    config = apply_use_time(config, overrides or {})
    model = from_pretrained(str(model_dir), task.head, dtype=config.model.dtype, attention=config.model.attention)
    if not saved.exists() and "data.max_length" not in (overrides or {}):
        # A checkpoint gptjax did not export: the default length, within what the model takes.
        config.data.max_length = min(config.data.max_length, model.config.n_positions)
    labels = list(model.labels or (f"LABEL_{i}" for i in range(model.num_labels or 0)))
    mesh = sharding.make_mesh(config.mesh)
    graphdef, params = steps_lib.place_params(model, mesh)
    _check_max_length(config, graphdef, params)
    steps = steps_lib.inference_steps(graphdef, peft.FULL, mesh, params, None)
    return Trained(config, task, labels, load_tokenizer(model_dir, task.prefix_space), steps, str(model_dir),
                   str(model_dir))
