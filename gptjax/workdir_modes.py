"""run.py's modes that start from a trained workdir: eval and export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gptjax import evaluation, sharding
from gptjax.experiment import prepare
from gptjax.hf import ARCHITECTURES, CheckpointError, from_pretrained
from gptjax.train import evaluate_split, export as export_model, make_predict_step, place_params, scalar_metrics

log = logging.getLogger("gptjax")


def exported_model_dir(workdir) -> Path:
    directory = Path(workdir) / "export"
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{workdir}: no trained model in it (expected {directory}); train first")
    return directory


def evaluate(config, workdir, split: str = "test") -> dict:
    """Evaluates the workdir's kept model on a split; writes WORKDIR/eval_SPLIT.json and prints the report."""
    exp = prepare(config, Path(workdir), model_dir=exported_model_dir(workdir))
    mesh = sharding.make_mesh()
    graphdef, params = place_params(exp.model, mesh)
    metrics = evaluate_split(exp, split, make_predict_step(graphdef), params, mesh)
    print(evaluation.format_report(split, metrics))
    out = Path(workdir) / f"eval_{split}.json"
    out.write_text(json.dumps(scalar_metrics(metrics), indent=2) + "\n", encoding="utf-8")
    return metrics


def export(workdir, export_dir) -> Path:
    """Writes the workdir's kept model, with its tokenizer, to export_dir as a Hugging Face directory."""
    if not export_dir:
        raise CheckpointError("--mode=export needs --export_dir=DIR")
    from transformers import AutoTokenizer

    source = exported_model_dir(workdir)
    architecture = json.loads((source / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    head = {v: k for k, v in ARCHITECTURES.items()}[architecture]
    model = from_pretrained(str(source), head)
    export_model(model, AutoTokenizer.from_pretrained(str(source)), Path(export_dir))
    log.info("exported %s to %s", source, export_dir)
    return Path(export_dir)
