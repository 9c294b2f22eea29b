"""The modes that use a trained run: eval and export (predict is gptjax/predict.py).

Both load the run through gptjax/artifact.py (a workdir's best model or latest checkpoint, or an
export), need no --config and no training data, and write nothing into the workdir.
"""

from __future__ import annotations

import logging
import os

from gptjax import artifact, data, workdir as wd
from gptjax.experiment import load_data
from gptjax.train import evaluate_encoded, export as export_model, scalar_metrics

log = logging.getLogger("gptjax")


def read_split(config, task, split: str, input_file: str | None) -> list:
    """The examples of one split: from a file the user names, or from the run's own source (only
    that split is read; a synthetic one is generated in a temporary directory)."""
    cfg = config.data
    if input_file:
        if not os.path.isfile(input_file):
            raise data.DataError(f"--input={input_file}: no such file")
        return task.check({split: task.read_file(input_file, cfg)}, cfg)[split]
    if split == "test" and cfg.test_split == "validation":
        split = "validation"
    try:
        return load_data(config, names=(split,))[split]
    except data.DataError as e:
        raise data.DataError(f"{e}\n(the run's data.source={cfg.source!r}; name a file to score with --input=FILE)") \
            from None


def encoded_split(trained, split: str = "test", input_file: str | None = None) -> data.EncodedSplit:
    """A split of the run's source (or a labelled file), encoded with the run's tokenizer and labels."""
    config, task, vocab = trained.config, trained.task, data.LabelVocab(trained.labels)
    examples = read_split(config, task, split, input_file)
    examples = task.check_labels({split: examples}, vocab, config.data.unknown_label)[split]
    return task.encode(examples, trained.tokenizer, vocab, config.data)


def evaluate(source, split: str = "test", which: str = "best", overrides=None, input_file=None, output=None) -> dict:
    """Scores a trained model on a split (or a file); prints the report and, with `output`,
    writes the metrics there as JSON."""
    trained = artifact.load(source, which, overrides)
    encoded = encoded_split(trained, split, input_file)
    metrics = evaluate_encoded(trained.task, encoded, trained.labels, trained.steps, trained.config, trained.tokenizer)
    print(trained.task.format_report(f"{input_file or split} ({which})", metrics))
    if output:
        wd.write_json(wd.path(output, "--output"), scalar_metrics(metrics))
    return metrics


def export(source, export_dir, which: str = "best", overwrite: bool = False) -> str:
    """Writes a trained model, with its tokenizer, to export_dir as a Hugging Face directory.
    A non-empty directory that is not an earlier gptjax export is refused unless `overwrite`."""
    if not export_dir:
        raise wd.WorkdirError("--mode=export needs --export_dir=DIR")
    target = wd.path(export_dir, "--export_dir")
    source_path = wd.path(source, "--workdir")
    if target.exists() and not target.is_dir():
        raise wd.WorkdirError(f"--export_dir={target}: is a file")
    if _inside(target, source_path) or _inside(source_path, target):
        raise wd.WorkdirError(f"--export_dir={target}: overlaps the model being read ({source_path}); a reading "
                              "mode writes nothing into it: export elsewhere")
    if not overwrite and wd.is_nonempty_dir(target) and not (target / artifact.EXPORT_RUN_FILE).exists():
        raise wd.WorkdirError(f"--export_dir={target}: not empty and not an earlier gptjax export; choose an empty "
                              "or new directory (or pass --overwrite)")
    trained = artifact.load(source, which)
    export_model(trained.model, trained.tokenizer, target, trained.config)
    log.info("exported the %s model of %s to %s", which, source, target)
    return str(target)


def _inside(path, parent) -> bool:
    a, b = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(parent))
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)
