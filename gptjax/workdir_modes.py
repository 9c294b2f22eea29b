"""The modes that use a trained run: eval and export (predict is gptjax/predict.py).

Both load the run through gptjax/artifact.py (a workdir's best model or latest checkpoint, or an
export), need no --config and no training data, and write nothing into the workdir.
"""

from __future__ import annotations

import logging
import os

from gptjax import artifact, workdir as wd
from gptjax.data.encode import EncodedSplit
from gptjax.data.labels import LabelVocab
from gptjax.errors import DataError
from gptjax.experiment import load_data
from gptjax.train import evaluate_encoded, scalar_metrics

log = logging.getLogger("gptjax")


def read_split(config, task, split: str, input_file: str | None) -> list:
    """The examples of one split: from a file the user names, or from the run's own source (only
    that split is read; a synthetic one is generated in a temporary directory)."""
    cfg = config.data
    if input_file:
        if not os.path.isfile(input_file):
            raise DataError(f"--input={input_file}: no such file")
        return task.check({split: task.read_file(input_file, cfg)}, cfg)[split]
    if split == "test" and cfg.test_split == "validation":
        split = "validation"
    try:
        return load_data(config, names=(split,))[split]
    except DataError as e:
        raise DataError(f"{e}\n(the run's data.source={cfg.source!r}; name a file to score with --input=FILE)") \
            from None


def encoded_split(trained, split: str = "test", input_file: str | None = None) -> EncodedSplit:
    """A split of the run's source (or a labelled file), encoded with the run's tokenizer and labels."""
    config, task, vocab = trained.config, trained.task, LabelVocab(trained.labels)
    examples = read_split(config, task, split, input_file)
    examples = task.check_labels({split: examples}, vocab, config.data.unknown_label)[split]
    return task.encode(examples, trained.tokenizer, vocab, config.data)


def evaluate(source, split: str = "test", which: str = "best", overrides=None, input_file=None, output=None) -> dict:
    """Scores a trained model on a split (or a file); prints the report and, with `output`,
    writes the metrics there as JSON."""
    wd.check_output(output, reads=(source, input_file))
    trained = artifact.load(source, which, overrides)
    if not input_file and trained.config.data.source not in (None, "synthetic"):
        wd.check_output(output, reads=(trained.config.data.source,))  # the split is read from there
    encoded = encoded_split(trained, split, input_file)
    metrics = evaluate_encoded(trained.task, encoded, trained.labels, trained.steps, trained.config, trained.tokenizer)
    print(trained.task.format_report(f"{input_file or split} ({which})", metrics))
    if output:
        wd.write_json(wd.path(output, "--output"), scalar_metrics(metrics))
    return metrics


def export(source, export_dir, which: str = "best", overwrite: bool = False) -> str:
    """Writes a trained model, with its tokenizer, to export_dir as a Hugging Face directory."""
    if not export_dir:
        raise wd.WorkdirError("--mode=export needs --export_dir=DIR")
    target = wd.path(export_dir, "--export_dir")
    check_export_dir(target, wd.path(source, "--workdir"), overwrite)
    trained = artifact.load(source, which)
    artifact.export(trained.model, trained.tokenizer, target, trained.config)
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

