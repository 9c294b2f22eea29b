"""The loop: train_and_evaluate(config, workdir) trains, evaluates each epoch (gptjax/evaluate.py),
keeps the best model, and leaves the workdir a self-contained artifact (gptjax/artifact.py). The
steps it runs come from gptjax/steps.py, as everything else's do.
"""

from __future__ import annotations

import dataclasses
import logging

import jax

from gptjax import artifact, partition, sharding, trackers, workdir as wd
from gptjax.checkpoint import Checkpoints, Preempted, PreemptionGuard, abstract_like
from gptjax.config import check_compatible, check_platform, config_json, validate
from gptjax.data.batching import epoch_batches, num_batches
from gptjax.errors import ConfigError
from gptjax.evaluate import evaluate_encoded, process_batch, scalar_metrics
from gptjax.experiment import prepare
from gptjax.reporting import Reporter
from gptjax.steps import build_steps, schedule_changes, schedule_length

log = logging.getLogger("gptjax")


@dataclasses.dataclass
class Progress:
    """Where the loop stands, beyond the train state: checkpointed as JSON beside it."""

    epoch: int = 0  # the epoch in progress
    offset: int = 0  # batches of that epoch already trained on
    best_score: float | None = None
    best_epoch: int | None = None
    epochs_without_gain: int = 0
    stopped_early: bool = False


def train_and_evaluate(config, workdir, start_over: bool = False) -> dict:
    """Trains on the config's data, evaluates on validation each epoch and on test at the end,
    keeps the best epoch's model and exports it to WORKDIR/export. Returns results.json's dict.

    With checkpoint.resume (the default) a workdir holding checkpoints continues from the newest
    readable one; SIGTERM / SIGINT save a checkpoint and raise Preempted. One run at a time
    holds the workdir. start_over moves the workdir's run (if any) aside into
    WORKDIR/previous/TIME/ once every check has passed, and trains a new one.
    """
    check_platform(validate(config))
    trackers.check(config)
    workdir = wd.path(workdir)
    wd.check_checkpoint_path(workdir)
    new_dir, new_lock = not workdir.exists(), not (workdir / wd.LOCK_FILE).exists()
    wd.prepare_for_writing(workdir)
    if jax.process_index() != 0:  # the hosts of one run share its workdir: process 0 holds the lock
        return _train(config, workdir, start_over)
    with wd.lock(workdir):
        try:
            return _train(config, workdir, start_over)
        except BaseException:
            wd.clean_failed_start(workdir, new_dir, new_lock)  # a start that failed leaves no trace
            raise


def _move_old_run_aside(workdir) -> None:
    if jax.process_index() == 0:
        aside = wd.move_aside(workdir, (*artifact.RUN_OUTPUTS, trackers.WANDB_DIR))
        if aside is None:
            log.info("--start_over: %s holds no earlier run; nothing to move aside", workdir)
        else:
            log.info("--start_over: the earlier run's files are moved to %s; training a new run", aside)
    if jax.process_count() > 1:  # no process opens the checkpoints before they are moved
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("gptjax start_over")


def _train(config, workdir, start_over: bool = False) -> dict:
    mesh = sharding.make_mesh(config.mesh)
    exp = prepare(config, workdir, new_run=start_over)
    cfg = config.train
    task = exp.task

    train_split = exp.encoded["train"]
    steps_per_epoch = num_batches(train_split, cfg.batch_size, buckets=exp.buckets)
    total_steps = schedule_length(cfg, steps_per_epoch)
    steps = build_steps(config, exp.model, mesh, total_steps)
    base = partition.checksum(steps.frozen)  # what checkpoints record of the base they need
    trainable_params = partition.count(steps.params)
    total_params = trainable_params + partition.count(steps.frozen)

    if start_over:  # every check of the new run has passed: only now is the old one moved
        _move_old_run_aside(workdir)
    checkpoints = Checkpoints(workdir, config.checkpoint.keep)
    progress, pending = Progress(), []
    restored = None
    if config.checkpoint.resume and not start_over:
        def check(meta):
            check_compatible(meta, config, exp.vocab.names, checkpoints.directory)
            partition.check_base(meta.get("base"), base, checkpoints.directory)

        restored = checkpoints.restore_latest(abstract_like(steps.state), check)
    if restored is not None:
        steps.state, meta = restored
        progress, pending = Progress(**meta["progress"]), meta["pending_metrics"]
        log.info("resuming from checkpoint %d (epoch %d, batch %d)", int(steps.state.step), progress.epoch + 1,
                 progress.offset)
        for line in schedule_changes(meta["config"], config, steps_per_epoch, int(steps.state.step)):
            log.warning("%s", line)
    elif checkpoints.best.latest_step() is not None:  # every checkpoint was damaged and set aside
        checkpoints.close()
        raise ConfigError(f"{checkpoints.directory}: no readable checkpoint to resume from (the damaged ones are set "
                          "aside as damaged-*); train in a new --workdir, or add --start_over to move this run aside "
                          "and train a new one here")
    # Every check has passed (experiment.prepare, the checkpoint's own): the first write.
    artifact.save_run(workdir, config, exp.model, exp.tokenizer, exp.vocab.names, exp.fingerprint, steps.frozen)
    exp.model = None  # the steps hold the parameters from here on

    primary = task.primary_metric
    step = int(steps.state.step)
    reporter = Reporter(workdir, total_steps, resume_step=step if restored is not None else None, pending=pending,
                        write=jax.process_index() == 0, config=config, primary_metric=task.primary_metric)
    guard = PreemptionGuard(checkpoints.manager)
    log.info("training %s: %d rows, %d steps per epoch, %d steps, %d devices, %d of %d parameters (%.2f%%)",
             task.name, len(train_split), steps_per_epoch, total_steps, mesh.size, trainable_params, total_params,
             100 * trainable_params / total_params)

    def save(step):
        meta = {"progress": dataclasses.asdict(progress), "pending_metrics": reporter.settle(),
                "config": config_json(config), "labels": exp.vocab.names, "base": base}
        with reporter.untimed():
            checkpoints.save(step, steps.state, meta)

    def evaluate(split, params=None):
        return evaluate_encoded(task, exp.encoded[split], exp.vocab.names, steps, config, exp.tokenizer, params)

    def validate_and_keep_best():
        with reporter.evaluating("validation"):
            val = evaluate("validation")
        reporter.eval_line(step, "validation", progress.epoch, scalar_metrics(val))
        if task.improves(val[primary], progress.best_score):
            progress.best_score, progress.best_epoch, progress.epochs_without_gain = val[primary], progress.epoch, 0
            with reporter.untimed():
                checkpoints.save_best(step, steps.params, {"epoch": progress.epoch, "step": step, "validation": val,
                                                           "base": base, "labels": exp.vocab.names})
        else:
            # Counts evaluations: with eval_every_steps unset, one an epoch.
            progress.epochs_without_gain += 1
        if cfg.patience is not None and progress.epochs_without_gain >= cfg.patience:
            log.info("early stopping at step %d (epoch %d): validation %s has not improved for %d evaluations",
                     step, progress.epoch + 1, primary, cfg.patience)
            progress.stopped_early = True

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
                metrics = reporter.step(lambda: steps.train(sharding.put_batch(process_batch(batch, rows), mesh)),
                                        int(batch["attention_mask"].sum()), batch["input_ids"].shape)
                step += 1
                progress.offset += 1
                reporter.pending(step, metrics)
                if step % cfg.log_every == 0:
                    reporter.flush_train(progress.epoch, steps.schedule)
                # Before any checkpoint of this step, which then holds the evaluation's outcome; not
                # at an epoch's (or the run's) last step, which the epoch's evaluation follows.
                if (cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and progress.offset < steps_per_epoch
                        and step < total_steps):
                    validate_and_keep_best()
                    if progress.stopped_early:
                        break
                if guard.requested(step):
                    save(step)
                    checkpoints.wait()
                    raise Preempted(f"stopped by {guard.signal_name or 'preemption'} at step {step}; checkpoint saved "
                                    f"in {checkpoints.directory}; run the same command to resume")
                if step % config.checkpoint.every_steps == 0 and progress.offset < steps_per_epoch:
                    save(step)
            reporter.flush_train(progress.epoch, steps.schedule)

            if not progress.stopped_early:  # else an evaluation at this step stopped it
                validate_and_keep_best()
            if progress.offset >= steps_per_epoch:  # not when max_steps stopped the epoch part way
                progress.epoch, progress.offset = progress.epoch + 1, 0
            save(step)

        checkpoints.wait()
        params, best = checkpoints.restore_best(abstract_like(steps.params))
        log.info("kept epoch %d, step %s (validation %s %.4f)", best["epoch"] + 1, best.get("step", "?"), primary,
                 progress.best_score)
        with reporter.evaluating("test"):
            test = evaluate("test", params)
        reporter.eval_line(step, "test", best["epoch"], scalar_metrics(test))
    finally:
        guard.restore()
        checkpoints.close()
        reporter.close()

    results = {
        "validation": scalar_metrics(best["validation"]),
        "test": scalar_metrics(test),
        "best_epoch": best["epoch"] + 1,
        "best_step": best.get("step"),  # absent from a best model saved by an older gptjax
        "steps": step,
        "num_truncated": {split: enc.num_truncated for split, enc in exp.encoded.items()},
        "trainable_params": trainable_params,
        "total_params": total_params,
    }
    if jax.process_index() != 0:  # one host writes what a person reads
        return results
    wd.write_json(workdir / "results.json", results)
    wd.write_text(workdir / "report.txt",
                  task.format_report(f"validation (epoch {best['epoch'] + 1})", best["validation"]) + "\n\n"
                  + task.format_report("test", test) + "\n")
    artifact.export(steps.model(params), exp.tokenizer, workdir / "export", config)
    log.info("test %s %.4f; results in %s", primary, test[primary], workdir)
    return results

