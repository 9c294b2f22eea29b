"""Evaluation on the devices: the model over every batch of an encoded split, scored by the
task's evaluator (gptjax/metrics.py). Training's per-epoch validation and test passes and
--mode=eval both run evaluate_encoded.

--mode=eval loads a run through gptjax/artifact.py (a workdir's best model or latest checkpoint,
or an export), needs no --config and no training data, and writes nothing into the workdir.
"""

from __future__ import annotations

import os

import jax

from gptjax import artifact, metrics, sharding, tasks, workdir as wd
from gptjax.data.batching import buckets_for, epoch_batches
from gptjax.data.encode import EncodedSplit, pad_token_id
from gptjax.data.labels import LabelVocab
from gptjax.data.sources import load_data
from gptjax.errors import DataError


def evaluate_encoded(task: tasks.Task, encoded: EncodedSplit, labels, steps, config, tokenizer, params=None) -> dict:
    """Metrics of one encoded split through the shared metrics module; every example counted.
    `params`: what trains, if not the steps' own (the best model's, say)."""
    evaluator = task.evaluator(encoded, labels, completions_fn(steps, tokenizer, config, params))
    batches = epoch_batches(encoded, config.train.eval_batch_size, buckets=buckets_for(config.data),
                            pad_id=pad_token_id(tokenizer))
    rows = sharding.process_rows(config.train.eval_batch_size)
    step = task.scores_from(steps)  # class ids, or a causal LM's per-row NLL sums
    return evaluator.run(lambda b: sharding.to_host(step(sharding.put_batch(process_batch(b, rows), steps.mesh),
                                                         params)),
                         batches)


def completions_fn(steps, tokenizer, config, params=None) -> metrics.CompletionsFn | None:
    """The model's greedy completion of each prompt (text), which a causal LM's exact_match on
    prompt/completion data scores: up to generate.max_new_tokens tokens, ended by EOS."""
    from gptjax.decoding import generate

    g = config.generate

    def complete(prompts):
        results = generate(steps.model(params), tokenizer, prompts, mesh=steps.mesh, batch_size=g.batch_size,
                           max_new_tokens=g.max_new_tokens, truncate=True)
        return [r.completion for r in results]

    return complete


def process_batch(batch, rows: slice):
    """This process's rows of a batch (all of them with one process)."""
    return batch if jax.process_count() == 1 else {k: v[rows] for k, v in batch.items()}


def scalar_metrics(scores: dict) -> dict:
    """The numbers of a metrics dict (the per-type tables too), without the report text."""
    return {k: v for k, v in scores.items() if k != "report"}


# ---------------------------------------------------------------------------------------------
# --mode=eval


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


def run(source, split: str = "test", which: str = "best", overrides=None, input_file=None, output=None) -> dict:
    """Scores a trained model on a split (or a file); prints the report and, with `output`,
    writes the metrics there as JSON."""
    wd.check_output(output, reads=(source, input_file))
    trained = artifact.load(source, which, overrides)
    if not input_file and trained.config.data.source not in (None, "synthetic"):
        wd.check_output(output, reads=(trained.config.data.source,))  # the split is read from there
    encoded = encoded_split(trained, split, input_file)
    scores = evaluate_encoded(trained.task, encoded, trained.labels, trained.steps, trained.config, trained.tokenizer)
    print(trained.task.format_report(f"{input_file or split} ({which})", scores))
    if output:
        wd.write_json(wd.path(output, "--output"), scalar_metrics(scores))
    return scores
