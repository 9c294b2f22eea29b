"""Where a run's config and metrics go: metrics.jsonl always, TensorBoard and Weights & Biases as
train.report_to says (transformers' `report_to`).

Each writer is a peer with the same three methods: config(tree), the run's config as
config_json's nested dict; scalars(step, split, values), one metrics.jsonl line; close(). The
Reporter (gptjax/reporting.py) decides what to write and when; the writers only where.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile

from etils import epath

from gptjax.errors import ConfigError, SetupError
from gptjax.workdir import append_lines, is_local

METRICS_FILE = "metrics.jsonl"
TRACKERS = ("tensorboard", "wandb")
WANDB_DIR = "wandb"  # W&B's own files, in the workdir unless WANDB_DIR says elsewhere


def check(config) -> None:
    """Refuses, before anything starts, a tracker that is unknown or not installed."""
    for name in config.train.report_to:
        if name not in TRACKERS:
            raise ConfigError(f"train.report_to: unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
    if "wandb" in config.train.report_to and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.report_to includes 'wandb', which is not installed: pip install 'gptjax[wandb]'")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"batch_size": 16}} as {"train.batch_size": 16}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def numbers(values: dict) -> dict:
    """The values a chart can plot: numbers, not flags, None or the per-type tables."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def open_all(workdir, names, metric_tags=()) -> list:
    """The writers for a run in `workdir`: metrics.jsonl, then each of `names` (train.report_to)."""
    writers = [MetricsFile(workdir / METRICS_FILE)]
    if "tensorboard" in names:
        writers.append(TensorBoard(workdir, metric_tags))
    if "wandb" in names:
        writers.append(WandB(workdir))
    return writers


class MetricsFile:
    """metrics.jsonl: appended to, never rewritten (reporting.read_metrics reads it back)."""

    def __init__(self, path):
        self.path = path

    def config(self, tree: dict) -> None:
        pass  # run.json holds it

    def scalars(self, step: int, split: str, values: dict) -> None:
        append_lines(self.path, [json.dumps({"step": step, "split": split, **values})])

    def close(self) -> None:
        pass


class TensorBoard:
    """WORKDIR/tensorboard: scalars as SPLIT/KEY, the config as text and as hparams (the HParams tab)."""

    def __init__(self, workdir, metric_tags=()):
        from tensorboardX import SummaryWriter

        # tensorboardX writes only local files (gs:// would need google-cloud-storage): on cloud
        # storage the events are written locally and copied up after each evaluation.
        self.directory = workdir / "tensorboard"
        self._staging = None if is_local(workdir) else tempfile.mkdtemp(prefix="gptjax-tensorboard-")
        self.writer = SummaryWriter(self._staging or str(self.directory))
        self.metric_tags = list(metric_tags)

    def config(self, tree: dict) -> None:
        from tensorboardX.summary import hparams

        flat = flatten(tree)
        rows = "\n".join(f"| {key} | {json.dumps(value)} |" for key, value in flat.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{rows}")
        # The HParams tab takes numbers, strings and booleans; a tuple is shown as its text.
        scalar = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flat.items()
                  if v is not None}
        experiment, start, self._end = hparams(scalar, {tag: 0.0 for tag in self.metric_tags})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def scalars(self, step: int, split: str, values: dict) -> None:
        if split == "run":
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(f"{split}/{key}", value, step)
        if split != "train":
            self._copy_up()

    def close(self) -> None:
        if getattr(self, "_end", None) is not None:
            self.writer.file_writer.add_summary(self._end)
        self.writer.close()
        self._copy_up()
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _copy_up(self) -> None:
        if not self._staging:
            return
        self.writer.flush()
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self._staging):
            epath.Path(self._staging, name).copy(self.directory / name, overwrite=True)


class WandB:
    """A Weights & Biases run per training command (a resumed run is a new one): W&B's own settings
    come from its environment (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE=offline, WANDB_DIR)."""

    def __init__(self, workdir):
        import wandb

        directory = os.environ.get("WANDB_DIR") or (str(workdir) if is_local(workdir) else None)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "gptjax", name=epath.Path(workdir).name,
                                  dir=directory, settings=wandb.Settings(console="off"))
        except Exception as e:  # noqa: BLE001 - whatever wandb raises (no login, no network)
            raise SetupError(f"train.report_to=wandb: wandb.init failed ({type(e).__name__}: {e}); run `wandb login`, "
                             "or set WANDB_MODE=offline") from None

    def config(self, tree: dict) -> None:
        self.run.config.update(tree)

    def scalars(self, step: int, split: str, values: dict) -> None:
        if split == "run":
            return
        logged = {f"{split}/{k}": v for k, v in numbers(values).items() if k != "epoch"}
        if logged:
            self.run.log(logged, step=step)

    def close(self) -> None:
        self.run.finish()
