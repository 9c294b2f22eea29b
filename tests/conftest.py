"""Shared fixtures: small datasets and configs built in the test, never downloaded."""

import json
import os
import sys
from pathlib import Path

# The suite runs on the CPU. Where plan mode's compilers are installed (gptjax[plan]), JAX would
# otherwise try to start the TPU and GPU they serve; and each xdist worker loads libtpu, which by
# default only one process may.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run.py lives at the top

from gptjax.data import synthetic  # noqa: E402
from gptjax.config import apply_overrides, load_config  # noqa: E402

POSITIVE = ["good", "great", "lovely", "fine", "superb", "happy"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dull", "terrible"]
FILLER = ["the", "film", "was", "really", "quite", "plot", "acting", "and", "very", "so"]


def sentiment_rows(n, seed):
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def conll_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("conll")
    synthetic.write_corpus(synthetic.make_ner_corpus(seed=1, sizes=(600, 61, 45)), str(directory))
    return directory


@pytest.fixture(scope="session")
def small_ner(tmp_path_factory):
    """A smaller CoNLL corpus, for runs that only need to be runs (12 steps an epoch at batch 16)."""
    directory = tmp_path_factory.mktemp("small_ner")
    synthetic.write_corpus(synthetic.make_ner_corpus(seed=3, sizes=(192, 24, 24)), str(directory))
    return directory


@pytest.fixture(scope="session")
def token_jsonl_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("token_jsonl")
    corpus = synthetic.make_ner_corpus(seed=2, sizes=(600, 50, 37))
    for split, examples in corpus.items():
        with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps({"tokens": list(ex.tokens), "tags": list(ex.tags)}) + "\n")
    return directory


@pytest.fixture(scope="session")
def sentiment_csv_dir(tmp_path_factory):
    import csv

    directory = tmp_path_factory.mktemp("sentiment_csv")
    for k, (split, n) in enumerate({"train": 400, "validation": 61, "test": 50}.items()):
        with open(directory / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(sentiment_rows(n, seed=k))
    return directory


@pytest.fixture(scope="session")
def sentiment_jsonl_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sentiment_jsonl")
    for k, (split, n) in enumerate({"train": 400, "validation": 40, "test": 33}.items()):
        with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in sentiment_rows(n, seed=10 + k):
                f.write(json.dumps(row) + "\n")
    return directory


def tiny_config(task, source, **overrides):
    """The demo config shrunk further: a 1-layer GPT-2 from scratch, a tokenizer trained on the fly."""
    config = load_config("demo")
    values = {
        "task": task,
        "data.source": str(source),
        "model.arch.n_layer": "1",
        "model.arch.n_embd": "64",
        "model.arch.n_head": "2",
        "tokenizer.vocab_size": "400",
        "train.batch_size": "16",
        "train.eval_batch_size": "16",
        "train.num_epochs": "4",
        "train.learning_rate": "3e-3",
        "train.log_every": "5",
    }
    values.update({k: str(v) for k, v in overrides.items()})
    return apply_overrides(config, values)


def evaluation_predictions(workdir, split="test"):
    """(trained, the split encoded, what evaluation predicts for it): the reference for predict."""
    from gptjax import artifact, sharding
    from gptjax.data.batching import buckets_for, epoch_batches
    from gptjax.data.encode import pad_token_id
    from gptjax.evaluate import encoded_split

    trained = artifact.load(workdir)
    encoded = encoded_split(trained, split)
    evaluator = trained.task.evaluator(encoded, trained.labels, None)
    batches = epoch_batches(encoded, trained.config.train.eval_batch_size, buckets=buckets_for(trained.config.data),
                            pad_id=pad_token_id(trained.tokenizer))
    mesh = trained.steps.mesh
    return trained, encoded, evaluator.predict(lambda b: np.asarray(trained.steps.predict(sharding.put_batch(b, mesh))),
                                               batches)
