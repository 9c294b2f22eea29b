"""A trained run as an artifact: what training writes so that nothing else is needed to use it,
the one loader that reads it back (a workdir or an export in; model, tokenizer, labels and
config out), and --mode=export, which writes what it loads as a Hugging Face directory. eval, export, predict and resume all go through here; none of them reads training
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
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from safetensors import SafetensorError
from flax import nnx

from gptjax import sharding, steps as steps_lib, tasks, workdir as wd
from gptjax.checkpoint import Checkpoints
from gptjax.config import apply_use_time, base_config, check_compatible, config_from_json, config_json
from gptjax.errors import CheckpointError, ConfigError
from gptjax.hf import CONFIG, from_pretrained, resolve_checkpoint, save_pretrained
from gptjax.model import GPT2Config, init_model
from gptjax.partition import FULL, adapt, check_base, checksum, config_partition
from gptjax.tokenizer import load_run_tokenizer, tokenizer_fingerprint

log = logging.getLogger("gptjax")

RUN_FILE = wd.RUN_MARKER  # run.json
TOKENIZER_DIR = "tokenizer"
LABELS_FILE = "labels.json"
BASE_DIR = "base"
EXPORT_RUN_FILE = wd.EXPORT_MARKER  # gptjax.json, in an export: the run's config, so it predicts with the same shapes
FORMAT = 1
EXPORT_FORMAT = 2  # gptjax.json: {"format", "config", "files": {name: sha256}}; format 1 held the config alone

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
        "base": checksum(frozen),
    })


# What a run writes into its workdir, and an export into its directory: a new run refuses a
# workdir holding any of them, since it would write over them.
RUN_OUTPUTS = (RUN_FILE, TOKENIZER_DIR, LABELS_FILE, BASE_DIR, "checkpoints", "best", "export", "metrics.jsonl",
               "results.json", "report.txt", "tensorboard", EXPORT_RUN_FILE, CONFIG, "model.safetensors")


def existing_run(workdir: epath.Path, config) -> dict | None:
    """The run.json of the run a training command continues (None: a new run). Refuses, before
    anything is read or written, a command that may not train there: checkpoint.resume=false on
    a run, a change of a key the run is made of, or a new run over files it would replace."""
    if is_run(workdir):
        if not config.checkpoint.resume:
            raise ConfigError(f"--workdir={workdir}: holds a trained run ({RUN_FILE}); checkpoint.resume=false starts "
                              "a new run, which needs an empty or new --workdir, or --start_over to move this run "
                              "aside")
        saved = wd.read_json(workdir / RUN_FILE, "run record")
        check_compatible(saved, config, None, workdir / RUN_FILE)
        return saved
    clash = sorted(name for name in RUN_OUTPUTS if (workdir / name).exists())
    if clash:
        raise ConfigError(f"--workdir={workdir}: holds {', '.join(clash)} but no {RUN_FILE}, so it is not a gptjax run "
                          "to resume, and a new run would write over them; use an empty or new --workdir, or "
                          "--start_over to move them aside")
    return None


def _save_tokenizer(tokenizer, directory: epath.Path) -> None:
    with wd.atomic_dir(directory) as tmp:
        tokenizer.save_pretrained(tmp)


def export(model, tokenizer, directory, config=None) -> None:
    """The model and its tokenizer as a Hugging Face directory that transformers loads (LoRA
    adapters folded into the weights: a plain GPT-2), with gptjax.json beside them: the run's
    config and the sha256 of every file, which load_export verifies. Only files an earlier export
    wrote are replaced or removed; a model card or anything else a user added stays."""
    directory = wd.path(directory, "--export_dir")
    earlier = _export_record(directory)[1] if (directory / EXPORT_RUN_FILE).exists() else None
    try:
        with wd.replace_files(directory, owned=earlier or (), last=EXPORT_RUN_FILE) as tmp:
            save_pretrained(model, tmp)
            tokenizer.save_pretrained(tmp)
            files = {name: _sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
            wd.write_json(wd.path(tmp) / EXPORT_RUN_FILE, {
                "format": EXPORT_FORMAT, "config": config_json(config) if config is not None else {}, "files": files})
    except (OSError, SafetensorError) as e:  # a full disk, a permission: nothing of the new export is left
        reason = getattr(e, "strerror", None) or str(e).removeprefix("Error while serializing: ")
        raise wd.WorkdirError(f"--export_dir={directory}: could not write the export ({reason})") from None


def _sha256(filename) -> str:
    with open(filename, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _export_record(model_dir: epath.Path) -> tuple[dict | None, dict | None]:
    """(the run's config, {file: sha256}) of an export's gptjax.json; (config, None) for an export
    older than the manifest, (None, None) without gptjax.json."""
    path = model_dir / EXPORT_RUN_FILE
    if not path.exists():
        return None, None
    record = wd.read_json(path, "export record")
    if "format" not in record:  # the first exports held the config alone
        return record, None
    return record["config"], record["files"]


def verify_export(model_dir: epath.Path, files: dict[str, str]) -> None:
    """Every file the export's manifest lists, as it was written."""
    for name, digest in sorted(files.items()):
        path = model_dir / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing from the export ({model_dir / EXPORT_RUN_FILE} lists it); "
                                  "export it again")
        if wd.is_local(path) and _sha256(path) != digest:
            raise CheckpointError(f"{path}: damaged (its sha256 differs from the one {EXPORT_RUN_FILE} recorded when "
                                  "it was exported); export it again")


# ---------------------------------------------------------------------------------------------
# --mode=export: a trained run (or an export) to a Hugging Face directory


def export_trained(source, export_dir, which: str = "best", overwrite: bool = False) -> str:
    """Writes a trained model, with its tokenizer, to export_dir as a Hugging Face directory."""
    if not export_dir:
        raise wd.WorkdirError("--mode=export needs --export_dir=DIR")
    target = wd.path(export_dir, "--export_dir")
    check_export_dir(target, wd.path(source, "--workdir"), overwrite)
    trained = load(source, which)
    export(trained.model, trained.tokenizer, target, trained.config)
    log.info("exported the %s model of %s to %s", which, source, target)
    return str(target)


def check_export_dir(target, source, overwrite: bool) -> None:
    """Refuses an export directory that is a file, overlaps the model being read, is or lies in
    a trained run, or lies in an export or a model. An earlier gptjax export is updated (its own
    files replaced); another non-empty directory only with `overwrite`, and even then only the
    files of the export's names are replaced."""
    if target.exists() and not target.is_dir():
        raise wd.WorkdirError(f"--export_dir={target}: is a file")
    if wd.overlaps(target, source):
        raise wd.WorkdirError(f"--export_dir={target}: overlaps the model being read ({source}); a reading "
                              "mode writes nothing into it: export elsewhere")
    found = wd.owner(target)
    if found:
        directory, what = found
        itself = wd.same_path(directory, target)
        if what == "a trained run" or not itself:
            raise wd.WorkdirError(f"--export_dir={target}: {'is' if itself else 'lies inside'} {directory}, {what}; "
                                  "export into an empty or new directory")
        if what == "a gptjax export":
            return  # updated: only its own files are replaced
    if not overwrite and target.is_dir() and any(True for _ in target.iterdir()):
        raise wd.WorkdirError(f"--export_dir={target}: not empty and not an earlier gptjax export; choose an empty "
                              "or new directory (or pass --overwrite: the export's files are then written beside "
                              "the others, replacing those of the same names)")


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
    model = nnx.eval_shape(lambda: adapt(init_model(model_config, task.head, labels=run["labels"]), config))
    return nnx.split(model)


def _on_mesh(tree, mesh):
    shardings = sharding.shardings_for(tree, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _load_workdir(workdir: epath.Path, which: str, overrides: dict) -> Trained:
    run = wd.read_json(workdir / RUN_FILE, "run record")
    config = apply_use_time(config_from_json(run["config"], RUN_FILE), overrides)
    mesh = sharding.make_mesh(config.mesh)
    graphdef, params = _abstract(run, config)
    partition = config_partition(config, nnx.merge(graphdef, params))
    trainable, frozen = partition.split(_on_mesh(params, mesh))
    trainable, meta = _restore_trainable(workdir, which, trainable, config)
    _check_labels(workdir, run, meta)
    if frozen:
        try:
            frozen = ocp.StandardCheckpointer().restore(workdir / BASE_DIR, frozen)
        except Exception as e:  # noqa: BLE001 - any failure to read means the base is unusable
            raise CheckpointError(f"{workdir / BASE_DIR}: the frozen base model cannot be read "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        check_base(run.get("base"), checksum(frozen), workdir / BASE_DIR)
    task = tasks.get(run["task"])
    tokenizer = load_run_tokenizer(workdir / TOKENIZER_DIR, task.prefix_space)
    if run.get("tokenizer") not in (None, tokenizer_fingerprint(tokenizer)):
        raise CheckpointError(f"{workdir / TOKENIZER_DIR}: not the tokenizer the run trained with (its fingerprint "
                              f"differs from {RUN_FILE}'s); restore the run's own tokenizer/")
    steps = steps_lib.inference_steps(graphdef, partition, mesh, trainable, frozen)
    sharding.check_batch_size(config.train.eval_batch_size, mesh, "train.eval_batch_size")
    _check_max_length(config, graphdef, params)
    return Trained(config, task, list(run["labels"]), tokenizer, steps, str(workdir), str(workdir / TOKENIZER_DIR))


def _check_labels(workdir, run: dict, meta: dict) -> None:
    """run.json's labels against labels.json and the checkpoint's own record: an edited label
    list would silently rename the model's classes."""
    labels = list(run["labels"])
    if labels:
        written = wd.read_json(workdir / LABELS_FILE, "label list").get("names")
        if written != labels:
            raise CheckpointError(f"{workdir}: {RUN_FILE} has labels {labels} but {LABELS_FILE} has {written}; one of "
                                  "them was edited after training")
    if "labels" in meta and meta["labels"] != labels:
        raise CheckpointError(f"{workdir / RUN_FILE}: its labels {labels} are not the ones the model was trained with "
                              f"({meta['labels']}, as its checkpoint records); restore them")


def _check_max_length(config, graphdef, params) -> None:
    n_positions = nnx.merge(graphdef, params).config.n_positions
    if config.data.max_length > n_positions:
        raise ConfigError(f"data.max_length={config.data.max_length} exceeds the model's n_positions={n_positions}")


def _restore_trainable(workdir, which: str, target, config):
    """(the trained parameters, their checkpoint's record) of the best model or the latest
    checkpoint; no optimizer state is built or read."""
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
            return restored
        tx, _ = steps_lib.make_optimizer(config.train, 1)
        step = jax.ShapeDtypeStruct((), "int32")
        restored = checkpoints.restore_latest_params(steps_lib.TrainState(step, target, jax.eval_shape(tx.init, target)))
        if restored is None:
            raise CheckpointError(f"{checkpoints.directory}: no checkpoint in it")
        log.info("the latest checkpoint: step %d", restored[1])
        return restored[0], restored[2]
    finally:
        checkpoints.close()


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
    saved, files = _export_record(model_dir)
    if files is not None:
        verify_export(model_dir, files)
    config = config_from_json(saved, RUN_FILE) if saved is not None else base_config()
    kept = tasks.TASKS.get(config.task) if saved is not None else None
    if kept is not None and kept.architecture == task.architecture:
        task = kept  # token and tagging export as one class: the run's config tells them apart
    config.task = task.name
    config = apply_use_time(config, overrides or {})
    model = from_pretrained(str(model_dir), task.head, dtype=config.model.dtype, attention=config.model.attention)
    if saved is None and "data.max_length" not in (overrides or {}):
        # A checkpoint gptjax did not export: the default length, within what the model takes.
        config.data.max_length = min(config.data.max_length, model.config.n_positions)
    labels = list(model.labels or (f"LABEL_{i}" for i in range(model.num_labels or 0)))
    mesh = sharding.make_mesh(config.mesh)
    graphdef, params = steps_lib.place_params(model, mesh)
    _check_max_length(config, graphdef, params)
    steps = steps_lib.inference_steps(graphdef, FULL, mesh, params, None)
    return Trained(config, task, labels, load_run_tokenizer(model_dir, task.prefix_space), steps, str(model_dir),
                   str(model_dir))
