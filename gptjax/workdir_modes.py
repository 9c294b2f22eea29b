"""run.py's modes that start from a trained workdir: eval and export.

Both read the workdir's best model (WORKDIR/best, the one kept by the validation metric) or its
latest checkpoint; a workdir that only holds export/ (copied without checkpoints) works too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flax import nnx

from gptjax import evaluation, peft, sharding
from gptjax.checkpoint import Checkpoints, abstract_like, check_compatible
from gptjax.experiment import prepare
from gptjax.hf import CheckpointError
from gptjax.train import (
    evaluate_split, export as export_model, init_train_state, make_optimizer, make_predict_step, place_params,
    scalar_metrics,
)

log = logging.getLogger("gptjax")
WHICH = ("best", "latest")


def load_trained(config, workdir, which: str = "best"):
    """(experiment, graphdef, params on the mesh, mesh) of a trained workdir.

    Checkpoints hold what trained; the frozen rest (train.freeze, LoRA) is rebuilt from the config
    and checked against the checksum the checkpoint recorded. The params returned are the whole
    model's (LoRA adapters unmerged, as in training)."""
    workdir = Path(workdir)
    mesh = sharding.make_mesh(config.mesh)
    if not (workdir / "checkpoints").is_dir():
        export_dir = workdir / "export"
        if which != "best" or not (export_dir / "config.json").is_file():
            raise CheckpointError(f"{workdir}: no checkpoints in it; train first")
        exp = prepare(config, workdir, model_dir=export_dir)
        graphdef, params = place_params(exp.model, mesh)
        return exp, graphdef, params, mesh
    exp = prepare(config, workdir)  # the model's structure and the tokenizer, as training built them
    partition = peft.partition(config, exp.model)
    checkpoints = Checkpoints(workdir)
    try:
        if which == "best":
            graphdef, params = place_params(exp.model, mesh)
            trainable, frozen = partition.split(params)
            restored = checkpoints.restore_best(abstract_like(trainable))
            if restored is None:
                raise CheckpointError(f"{workdir}: no best model yet (no epoch has been evaluated)")
            trainable, meta = restored
            peft.check_base(meta.get("base"), peft.checksum(frozen), checkpoints.best_directory)
            log.info("the best model: epoch %d", meta["epoch"] + 1)
        else:
            tx, _ = make_optimizer(config.train, 1)
            graphdef, state, frozen = init_train_state(exp.model, tx, mesh, partition)
            base = peft.checksum(frozen)

            def check(meta):
                check_compatible(meta, config, exp.vocab.names, checkpoints.directory)
                peft.check_base(meta.get("base"), base, checkpoints.directory)

            restored = checkpoints.restore_latest(abstract_like(state), check)
            if restored is None:
                raise CheckpointError(f"{workdir}: no readable checkpoint in {checkpoints.directory}")
            trainable = restored[0].params
            log.info("the latest checkpoint: step %d", int(restored[0].step))
        params = partition.merge(trainable, frozen)
    finally:
        checkpoints.close()
    exp.model = None
    return exp, graphdef, params, mesh


def evaluate(config, workdir, split: str = "test", which: str = "best") -> dict:
    """Evaluates a trained model on a split; writes WORKDIR/eval_SPLIT.json and prints the report."""
    exp, graphdef, params, mesh = load_trained(config, workdir, which)
    metrics = evaluate_split(exp, split, make_predict_step(graphdef), params, mesh)
    print(evaluation.format_report(f"{split} ({which})", metrics))
    out = Path(workdir) / f"eval_{split}.json"
    out.write_text(json.dumps(scalar_metrics(metrics), indent=2) + "\n", encoding="utf-8")
    return metrics


def export(config, workdir, export_dir, which: str = "best") -> Path:
    """Writes a trained model, with its tokenizer, to export_dir as a Hugging Face directory."""
    if not export_dir:
        raise CheckpointError("--mode=export needs --export_dir=DIR")
    exp, graphdef, params, _ = load_trained(config, workdir, which)
    export_model(nnx.merge(graphdef, params), exp.tokenizer, Path(export_dir))
    log.info("exported the %s model of %s to %s", which, workdir, export_dir)
    return Path(export_dir)
