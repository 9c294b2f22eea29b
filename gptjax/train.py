"""The train and eval steps, and the loop that runs them: train_and_evaluate(config, workdir).

The state is plain pytrees (parameters as an nnx.State, Optax's state, the step), so one
jax.jit-compiled function updates it with its buffers donated, and the same pytrees are what
checkpoints hold. The model's graph (its structure, no arrays) is closed over.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gptjax import evaluation, peft, sharding
from gptjax.checkpoint import Checkpoints, Preempted, PreemptionGuard, abstract_like, check_compatible, config_json
from gptjax.config import ConfigError
from gptjax.data import IGNORE_INDEX, epoch_batches, num_batches
from gptjax.experiment import Experiment, prepare
from gptjax.hf import save_pretrained
from gptjax.reporting import Reporter

log = logging.getLogger("gptjax")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # nnx.State of the model's parameters (float32)
    opt_state: Any


# ---------------------------------------------------------------------------------------------
# The optimizer


def learning_rate_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then linear decay to 0 at the last step."""
    warmup = int(train_cfg.warmup_ratio * total_steps) if train_cfg.warmup_steps is None else train_cfg.warmup_steps
    warmup = min(warmup, total_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, train_cfg.learning_rate, max(warmup, 1)),
            optax.linear_schedule(train_cfg.learning_rate, 0.0, max(total_steps - warmup, 1)),
        ],
        [warmup],
    )


def decay_mask(params):
    """Weight decay on matrices only: kernels, embeddings and LoRA adapters, not biases or LayerNorm
    scales.

    Decided by name rather than rank, since stacked blocks give biases and scales a layer axis.
    """
    def is_matrix(path, _):
        names = {str(getattr(k, "key", getattr(k, "name", ""))) for k in path}
        return bool(names & {"kernel", "embedding", "lora_a", "lora_b"})

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(train_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(train_cfg, total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(train_cfg.max_grad_norm),
        optax.adamw(
            schedule, b1=train_cfg.adam_b1, b2=train_cfg.adam_b2, eps=train_cfg.adam_eps,
            weight_decay=train_cfg.weight_decay, mask=decay_mask,
        ),
    )
    return tx, schedule


# ---------------------------------------------------------------------------------------------
# The steps


def masked_cross_entropy(logits, labels):
    """(sum of the cross-entropy over labelled positions, their count); -100 counts in neither."""
    valid = labels != IGNORE_INDEX
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid)


def make_train_step(graphdef, tx, *, seed: int, grad_accum_steps: int = 1, partition: peft.Partition = peft.FULL,
                    state_sharding=None):
    """train_step(state, batch, frozen=None) -> (state, metrics); the batch is split into
    grad_accum_steps micro-batches whose gradients are summed before the single optimizer update.

    state.params holds what trains; `frozen` the rest (partition.split's halves, gptjax/peft.py).
    The frozen parameters are an input, not a closed-over constant, so XLA neither embeds nor
    copies them, and they get no gradient. `state_sharding` (the state's own shardings) pins the
    new state where the old one was, so that it stays sharded and the step compiles once."""
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch, frozen=None):
        # Rows i, i+A, i+2A, ... form micro-batch i: the split stays local to each device's rows.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, grad_accum_steps, *x.shape[1:]), 0, 1), batch)
        step_key = jax.random.fold_in(base_key, state.step)

        def accumulate(carry, inputs):
            grads, loss_sum, count = carry
            index, mb = inputs

            def loss_fn(params):
                model = nnx.merge(graphdef, partition.merge(params, frozen))
                logits = model(mb["input_ids"], mb["attention_mask"], dropout_key=jax.random.fold_in(step_key, index))
                return masked_cross_entropy(logits, mb["labels"])

            (mb_loss, mb_count), mb_grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            grads = jax.tree.map(jnp.add, grads, mb_grads)
            return (grads, loss_sum + mb_loss, count + mb_count), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        (grads, loss_sum, count), _ = jax.lax.scan(accumulate, init, (jnp.arange(grad_accum_steps), micro))
        # The gradient of the masked mean over the whole batch, however it was split.
        denominator = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss_sum / denominator, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    out_shardings = None if state_sharding is None else (state_sharding, None)
    return jax.jit(train_step, donate_argnums=(0,), out_shardings=out_shardings)


def make_predict_step(graphdef, partition: peft.Partition = peft.FULL):
    """predict(params, batch, frozen=None) -> the argmax class ids, [B, T] or [B]. With a
    partition, params and frozen are its two halves."""

    def predict(params, batch, frozen=None):
        logits = nnx.merge(graphdef, partition.merge(params, frozen))(batch["input_ids"], batch["attention_mask"])
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.jit(predict)


def place_params(model, mesh):
    """(graphdef, parameters on the mesh): the model split into structure and arrays, each array
    sharded by its logical axes (sharding.RULES)."""
    graphdef, params = nnx.split(model)
    return graphdef, jax.device_put(params, sharding.shardings_for(params, mesh))


def init_train_state(model, tx, mesh, partition: peft.Partition = peft.FULL) -> tuple[Any, TrainState, Any]:
    """(graphdef, state, frozen) on the mesh: the state holds the trainable parameters (all of
    them by default) and an optimizer state for them alone; `frozen` the rest. Every leaf is
    committed to its sharding, as the step's outputs will be, so the second call does not
    compile the step again."""
    graphdef, params = place_params(model, mesh)
    trainable, frozen = partition.split(params)
    make = lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))  # noqa: E731
    shardings = sharding.shardings_for(jax.eval_shape(make, trainable), mesh)
    # Built inside jit straight into its shardings: the optimizer state is never whole on one device.
    state = jax.jit(make, out_shardings=shardings)(trainable)
    return graphdef, state, jax.device_put(frozen, sharding.shardings_for(frozen, mesh))


def init_state(model, tx, mesh) -> tuple[Any, TrainState]:
    """(graphdef, state) for full fine-tuning: init_train_state without a frozen part."""
    graphdef, state, _ = init_train_state(model, tx, mesh)
    return graphdef, state


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_split(exp: Experiment, split: str, predict, params, mesh, frozen=None) -> dict:
    """Metrics of one split through the shared evaluation module; every example counted."""
    evaluator = evaluation.make_evaluator(exp.task, exp.encoded[split].examples, exp.vocab.names)
    batches = eval_batches(exp, split)
    rows = sharding.process_rows(exp.config.train.eval_batch_size)
    return evaluator.run(
        lambda b: sharding.to_host(predict(params, sharding.put_batch(_rows(b, rows), mesh), frozen)), batches)


def _rows(batch, rows: slice):
    """This process's rows of a batch (all of them with one process)."""
    return batch if jax.process_count() == 1 else {k: v[rows] for k, v in batch.items()}


def eval_batches(exp: Experiment, split: str):
    cfg = exp.config
    return epoch_batches(exp.encoded[split], cfg.train.eval_batch_size, buckets=exp.buckets, pad_id=exp.pad_id)


def scalar_metrics(metrics: dict) -> dict:
    """The numbers of a metrics dict (the per-type tables too), without the report text."""
    return {k: v for k, v in metrics.items() if k != "report"}


# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class Progress:
    """Where the loop stands, beyond the train state: checkpointed as JSON beside it."""

    epoch: int = 0  # the epoch in progress
    offset: int = 0  # batches of that epoch already trained on
    best_score: float | None = None
    best_epoch: int | None = None
    epochs_without_gain: int = 0
    stopped_early: bool = False


def _check_config(config, mesh) -> None:
    cfg = config.train
    sharding.check_batch_size(cfg.batch_size, mesh)
    sharding.check_batch_size(cfg.eval_batch_size, mesh, "train.eval_batch_size")
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is not divisible by train.grad_accum_steps={cfg.grad_accum_steps}")


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains on the config's data, evaluates on validation each epoch and on test at the end,
    keeps the best epoch's model and exports it to WORKDIR/export. Returns results.json's dict.

    With checkpoint.resume (the default) a workdir holding checkpoints continues from the newest
    readable one; SIGTERM / SIGINT save a checkpoint and raise Preempted.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh)
    _check_config(config, mesh)
    exp = prepare(config, workdir)
    cfg = config.train

    train_split = exp.encoded["train"]
    steps_per_epoch = num_batches(train_split, cfg.batch_size, buckets=exp.buckets)
    total_steps = steps_per_epoch * cfg.num_epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    tx, schedule = make_optimizer(cfg, total_steps)
    partition = peft.partition(config, exp.model)
    graphdef, state, frozen = init_train_state(exp.model, tx, mesh, partition)
    exp.model = None  # the state (and `frozen`) hold the parameters from here on
    base = peft.checksum(frozen)  # what checkpoints record of the base they need
    trainable_params, total_params = peft.count(state.params), peft.count(state.params) + peft.count(frozen)

    checkpoints = Checkpoints(workdir, config.checkpoint.keep)
    progress, pending = Progress(), []
    restored = None
    if config.checkpoint.resume:
        def check(meta):
            check_compatible(meta, config, exp.vocab.names, checkpoints.directory)
            peft.check_base(meta.get("base"), base, checkpoints.directory)

        restored = checkpoints.restore_latest(abstract_like(state), check)
    if restored is not None:
        state, meta = restored
        progress, pending = Progress(**meta["progress"]), meta["pending_metrics"]
        log.info("resuming from checkpoint %d (epoch %d, batch %d)", int(state.step), progress.epoch + 1, progress.offset)
    elif checkpoints.latest_step() is not None or checkpoints.best.latest_step() is not None:
        checkpoints.close()
        raise ConfigError(f"{workdir}: holds checkpoints; with checkpoint.resume=false use an empty --workdir")

    train_step = sharding.under_mesh(mesh, make_train_step(
        graphdef, tx, seed=cfg.seed, grad_accum_steps=cfg.grad_accum_steps, partition=partition,
        state_sharding=jax.tree.map(lambda x: x.sharding, state)))
    predict = sharding.under_mesh(mesh, make_predict_step(graphdef, partition))
    primary = evaluation.primary_metric(exp.task)
    step = int(state.step)
    reporter = Reporter(workdir, total_steps, resume_step=step if restored is not None else None, pending=pending,
                        write=jax.process_index() == 0)
    guard = PreemptionGuard(checkpoints.manager)
    log.info("training %s: %d examples, %d steps per epoch, %d steps, %d devices, %d of %d parameters (%.2f%%)",
             exp.task, len(train_split), steps_per_epoch, total_steps, mesh.size, trainable_params, total_params,
             100 * trainable_params / total_params)

    def save(step):
        meta = {"progress": dataclasses.asdict(progress), "pending_metrics": reporter.settle(),
                "config": config_json(config), "labels": exp.vocab.names, "base": base}
        checkpoints.save(step, state, meta)

    rows = sharding.process_rows(cfg.batch_size)

    def done():
        # Recomputed rather than stored, so that resuming with more epochs trains on.
        return progress.stopped_early or step >= total_steps or progress.epoch >= cfg.num_epochs

    try:
        while not done():
            batches = epoch_batches(train_split, cfg.batch_size, buckets=exp.buckets, pad_id=exp.pad_id,
                                    seed=cfg.seed, epoch=progress.epoch, shuffle=True, start=progress.offset)
            for batch in batches:
                if step >= total_steps:
                    break
                reporter.count_tokens(int(batch["attention_mask"].sum()))
                state, metrics = train_step(state, sharding.put_batch(_rows(batch, rows), mesh), frozen)
                step += 1
                progress.offset += 1
                reporter.pending(step, metrics)
                if step % cfg.log_every == 0:
                    reporter.flush_train(progress.epoch, schedule)
                if guard.requested(step):
                    save(step)
                    checkpoints.wait()
                    raise Preempted(f"stopped by {guard.signal_name or 'preemption'} at step {step}; checkpoint saved "
                                    f"in {checkpoints.directory}; run the same command to resume")
                if step % config.checkpoint.every_steps == 0 and progress.offset < steps_per_epoch:
                    save(step)
            reporter.flush_train(progress.epoch, schedule)

            val = evaluate_split(exp, "validation", predict, state.params, mesh, frozen)
            reporter.eval_line(step, "validation", progress.epoch, scalar_metrics(val))
            if progress.best_score is None or val[primary] > progress.best_score:
                progress.best_score, progress.best_epoch, progress.epochs_without_gain = val[primary], progress.epoch, 0
                checkpoints.save_best(step, state.params, {"epoch": progress.epoch, "validation": val, "base": base})
            else:
                progress.epochs_without_gain += 1
            if cfg.patience is not None and progress.epochs_without_gain >= cfg.patience:
                log.info("early stopping after epoch %d: validation %s has not improved for %d epochs",
                         progress.epoch + 1, primary, cfg.patience)
                progress.stopped_early = True
            if progress.offset >= steps_per_epoch:  # not when max_steps stopped the epoch part way
                progress.epoch, progress.offset = progress.epoch + 1, 0
            save(step)

        checkpoints.wait()
        params, best = checkpoints.restore_best(abstract_like(state.params))
        log.info("kept epoch %d (validation %s %.4f)", best["epoch"] + 1, primary, progress.best_score)
        test = evaluate_split(exp, "test", predict, params, mesh, frozen)
        reporter.eval_line(step, "test", best["epoch"], scalar_metrics(test))
    finally:
        guard.restore()
        checkpoints.close()
        reporter.close()

    results = {
        "validation": scalar_metrics(best["validation"]),
        "test": scalar_metrics(test),
        "best_epoch": best["epoch"] + 1,
        "steps": step,
        "num_truncated": {split: enc.num_truncated for split, enc in exp.encoded.items()},
        "trainable_params": trainable_params,
        "total_params": total_params,
    }
    if jax.process_index() != 0:  # one host writes what a person reads
        return results
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (workdir / "report.txt").write_text(
        evaluation.format_report(f"validation (epoch {best['epoch'] + 1})", best["validation"]) + "\n\n"
        + evaluation.format_report("test", test) + "\n",
        encoding="utf-8",
    )
    export(nnx.merge(graphdef, partition.merge(params, frozen)), exp.tokenizer, workdir / "export")
    log.info("test %s %.4f; results in %s", primary, test[primary], workdir)
    return results


def export(model, tokenizer, directory: Path) -> None:
    """The model and its tokenizer as a Hugging Face directory that transformers loads (LoRA
    adapters folded into the weights: a plain GPT-2)."""
    save_pretrained(model, directory)
    tokenizer.save_pretrained(str(directory))
