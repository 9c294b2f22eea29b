"""The task registry, and the causal-LM task end to end: reading and packing text, completion-only
labels, a tiny run, its export in transformers, LoRA and freezing, eval without the training data
(perplexity against a direct computation: tests/test_evaluate.py)."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from gptjax import artifact, evaluate, model as model_lib, partition, sharding, tasks, train
from gptjax.config import base_config
from gptjax.errors import ConfigError
from gptjax.data import batching, encode, readers, synthetic
from gptjax.data.examples import CompletionExample, TextExample
from gptjax.data.labels import IGNORE_INDEX
from gptjax.errors import DataError
from gptjax.tokenizer import load_run_tokenizer, train_tokenizer

DOCUMENTS = ["the cat sat on the mat .", "a dog ran .", "the day after monday is tuesday .",
             "copy red blue : red blue ."] * 10
PAIRS = [("2 + 2 =", " 4"), ("the capital of peru is", " lima"), ("count : one two", " three four")]


def lm_tokenizer():
    texts = DOCUMENTS + [p + c for p, c in PAIRS]
    return train_tokenizer(texts, vocab_size=300, add_prefix_space=False)


@pytest.fixture(scope="module")
def tok():
    return lm_tokenizer()


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------
# The registry


def test_every_task_is_one_complete_entry():
    for name, task in tasks.TASKS.items():
        assert task.name == name and task.head in model_lib.HEADS
        # One export class a head; token and tagging share GPT2ForTokenClassification (gptjax.json tells them apart).
        assert tasks.by_architecture([task.architecture]).head == task.head
    assert tasks.CAUSAL_LM.architecture == "GPT2LMHeadModel"
    assert not tasks.CAUSAL_LM.higher_is_better and tasks.CAUSAL_LM.primary_metric == "loss"
    assert tasks.TAGGING.primary_metric == "accuracy" and tasks.TAGGING.higher_is_better
    with pytest.raises(ConfigError, match="task='span': choose one of token, tagging, sequence, causal_lm"):
        tasks.get("span")
    from gptjax.predict import OUTPUTS

    assert all(task.prediction is None or task.prediction in OUTPUTS for task in tasks.TASKS.values())


def test_the_registry_imports_no_mode():
    """The modes look up what they do for a task by its fields; the registry imports none of them
    (nor the model, nor JAX)."""
    code = "import sys, gptjax.tasks; print(*sorted(m for m in sys.modules if m.split('.')[0] in ('gptjax', 'jax')))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent.parent).stdout.split())
    assert "gptjax.tasks" in loaded
    modes = {"gptjax.predict", "gptjax.evaluate", "gptjax.train", "gptjax.artifact", "gptjax.experiment",
             "gptjax.text_generation", "gptjax.steps", "gptjax.model", "gptjax.hf", "jax"}
    assert not loaded & modes


# ---------------------------------------------------------------------------------------------
# Reading


def test_a_txt_split_is_plain_text_for_causal_lm_and_conll_for_token(tmp_path):
    write(tmp_path / "train.txt", "first\n\n  \nsecond document\n")
    write(tmp_path / "dev.txt", "third\n")
    write(tmp_path / "test.jsonl", '{"text": "fourth"}\n{"text": ""}\n')
    splits = tasks.CAUSAL_LM.load_splits(str(tmp_path))
    assert splits["train"] == [TextExample("first"), TextExample("second document")]  # blank lines skipped
    assert splits["train"][1].where().endswith("train.txt, line 4")
    assert splits["validation"] == [TextExample("third")] and splits["test"] == [TextExample("fourth")]
    with pytest.raises(DataError, match="train.txt, line 1: expected at least 2"):
        tasks.TOKEN.load_splits(str(tmp_path))  # the same file read as CoNLL columns


def test_prompt_completion_jsonl_and_mixed_kinds(tmp_path):
    path = write(tmp_path / "a.jsonl", "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    assert readers.read_lm_file(path) == [CompletionExample(p, c) for p, c in PAIRS]
    mixed = write(tmp_path / "b.jsonl", '{"prompt": "a", "completion": "b"}\n{"text": "c"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl, line 2: a text document, but .*line 1 is a prompt/completion"):
        readers.read_lm_file(mixed)
    empty = write(tmp_path / "c.jsonl", '{"prompt": "", "completion": "b"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl, line 1: 'prompt' and 'completion' must be non-empty"):
        readers.read_lm_file(empty)


def test_hub_text_column_skips_empty_lines_as_run_clm():
    from datasets import Dataset, DatasetDict

    rows = {"text": ["", " = Title = \n", "", " Some text .\n"]}  # wikitext's layout
    ds = DatasetDict({s: Dataset.from_dict(rows) for s in ("train", "validation", "test")})
    splits = readers.splits_from_hf(ds, lambda d, where: tasks.CAUSAL_LM.read_hub(d, where, base_config().data),
                                 name="wikitext")
    assert splits["train"] == [TextExample(" = Title = \n"), TextExample(" Some text .\n")]
    assert splits["test"][1].where() == "wikitext[test], row 3"


# ---------------------------------------------------------------------------------------------
# Packing and completion-only labels


def test_packing_labels_every_token_once_with_eos_between_documents(tok):
    examples = [TextExample(d) for d in DOCUMENTS[:7]]
    eos, L = tok.eos_token_id, 8
    encoded = encode.pack_documents(examples, tok, L)
    stream = [eos]
    for ex in examples:
        stream += tok(ex.text, add_special_tokens=False)["input_ids"] + [eos]
    assert stream.count(eos) == len(examples) + 1
    inputs, labels = encoded.input_ids, encoded.labels
    assert all(len(x) == L for x in inputs[:-1]) and 1 <= len(inputs[-1]) <= L  # blocks of max_length
    assert [len(x) for x in inputs] == [len(y) for y in labels]
    # Inputs are the stream, labels the stream one token on: every token after the first is a label once.
    assert np.concatenate(inputs).tolist() == stream[:-1]
    assert np.concatenate(labels).tolist() == stream[1:]
    for k in range(len(inputs) - 1):  # a block's last position is labelled with the next block's first token
        assert labels[k][-1] == inputs[k + 1][0]
    assert encoded.per_token and encoded.word_index is None and encoded.num_truncated == 0

    batches = batching.epoch_batches(encoded, 4, buckets=batching.make_buckets(L, (4,)), pad_id=eos)
    counted = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    assert counted == len(stream) - 1
    for b in batches:
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_completion_loss_counts_the_completion_and_its_eos_only(tok):
    examples = [CompletionExample(p, c) for p, c in PAIRS]
    encoded = encode.encode_completions(examples, tok, max_length=64)
    eos = tok.eos_token_id
    for ex, ids, labels in zip(examples, encoded.input_ids, encoded.labels):
        prompt = tok(ex.prompt, add_special_tokens=False)["input_ids"]
        completion = tok(ex.completion, add_special_tokens=False)["input_ids"]
        assert ids.tolist() == prompt + completion
        # Position t is labelled with token t + 1: -100 exactly where that token is the prompt's.
        assert labels.tolist() == [IGNORE_INDEX] * (len(prompt) - 1) + completion + [eos]
        assert tok.decode(labels[labels != IGNORE_INDEX][:-1]) == ex.completion
    batch = batching.make_batch(encoded, np.array([0, 1, 2, -1]), max(map(len, encoded.input_ids)) + 3, eos)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding and the padding row
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for _, c in PAIRS)

    cut = encode.encode_completions(examples, tok, max_length=4)
    assert cut.num_truncated == sum(len(ids) > 4 for ids in encoded.input_ids) and max(map(len, cut.input_ids)) == 4


# ---------------------------------------------------------------------------------------------
# A tiny causal LM (gptjax/evaluate.py's tests use it too)


def lm_config(**overrides):
    config = base_config()
    config.task = "causal_lm"
    config.data.max_length = 16
    config.data.buckets = (8, 16)
    config.train.eval_batch_size = 2
    for key, value in overrides.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    return config


def tiny_lm(tok, seed=0):
    cfg = model_lib.GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return model_lib.init_model(cfg, "causal_lm", seed=seed)


# ---------------------------------------------------------------------------------------------
# Training, freezing and LoRA


def test_head_only_is_refused_and_top_k_leaves_the_tied_embedding_frozen(tok, tmp_path):
    config = tiny_config("causal_lm", tmp_path, **{"train.freeze": "head_only"})
    with pytest.raises(ConfigError, match=r"head_only.*wte, tied"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "run.json").exists()
    config = lm_config(**{"train.freeze": "top_k", "train.trainable_blocks": 1})
    model = partition.adapt(tiny_lm(tok), config)
    trainable, frozen = partition.config_partition(config, model).split(nnx.state(model, nnx.Param))
    assert "wte" in frozen["transformer"] and "ln_f" in trainable["transformer"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return synthetic.write_lm_corpus(0, (400, 40, 40), str(tmp_path_factory.mktemp("lm")))


LM_RUN = {"train.num_epochs": 2, "train.learning_rate": 3e-3, "data.max_length": 32, "data.buckets": "(16, 32)",
          "model.arch.n_positions": 32, "tokenizer.vocab_size": 300, "model.dropout": 0.0}


def untrained_loss(config, tmp_path):
    """The validation loss of the run's model before any training (same seed, same data)."""
    from gptjax.experiment import prepare
    from gptjax.steps import build_steps

    exp = prepare(config, tmp_path)
    steps = build_steps(config, exp.model, sharding.make_mesh(config.mesh))
    return evaluate.evaluate_encoded(exp.task, exp.encoded["validation"], [], steps, config, exp.tokenizer)["loss"]


@pytest.fixture(scope="module")
def lm_run(lm_dir, tmp_path_factory):
    data_copy = tmp_path_factory.mktemp("lm_data")
    shutil.copytree(lm_dir, data_copy, dirs_exist_ok=True)
    config = tiny_config("causal_lm", data_copy, **LM_RUN)
    workdir = tmp_path_factory.mktemp("lm_run")
    before = untrained_loss(config, tmp_path_factory.mktemp("untrained"))
    return workdir, train.train_and_evaluate(config, str(workdir)), before, data_copy


def test_causal_lm_run_learns_and_writes_loss_and_perplexity(lm_run):
    workdir, results, before, _ = lm_run
    for split in ("validation", "test"):
        assert {"loss", "perplexity", "tokens"} <= set(results[split])
        assert results[split]["perplexity"] == pytest.approx(math.exp(results[split]["loss"]))
    assert results["validation"]["loss"] < before - 1.0  # perplexity e times lower at least
    assert json.loads((workdir / "results.json").read_text())["test"] == results["test"]
    assert json.loads((workdir / "run.json").read_text())["labels"] == []
    assert not (workdir / "labels.json").exists()  # no label vocabulary
    assert "perplexity" in (workdir / "report.txt").read_text()


def test_causal_lm_export_is_a_gpt2_lm_head_model_with_the_same_logits(lm_run):
    import torch
    import transformers

    workdir, *_ = lm_run
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(workdir / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    trained = artifact.load(workdir / "export")
    assert trained.task is tasks.CAUSAL_LM and trained.labels == []
    ids = np.random.default_rng(0).integers(0, hf.config.vocab_size, (2, 20))
    with torch.no_grad():
        expected = hf.eval()(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(trained.model(ids)), expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(artifact.load(workdir).model(ids)), expected, atol=1e-4)


def test_causal_lm_eval_without_the_training_data_and_predict_says_no(lm_run, lm_dir):
    from gptjax.predict import Predictor
    from gptjax.evaluate import run as evaluate

    workdir, results, _, data_copy = lm_run
    shutil.rmtree(data_copy)
    with pytest.raises(DataError, match="--input=FILE"):
        evaluate(str(workdir))
    test_file = str(lm_dir + "/test.txt")
    assert evaluate(str(workdir), input_file=test_file)["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)
    assert evaluate(str(workdir / "export"), input_file=test_file)["loss"] == pytest.approx(results["test"]["loss"],
                                                                                          rel=1e-5)
    with pytest.raises(ConfigError, match="a Predictor does not apply to a causal_lm model"):
        Predictor(artifact.load(workdir))
    # On the command line, predict on a causal LM continues each line, as --mode=generate does.
    import run

    prompts = Path(workdir).parent / f"{Path(workdir).name}-prompts.txt"
    prompts.write_text("Monday comes before\n\n")
    for mode in ("predict", "generate"):
        out = Path(workdir).parent / f"{Path(workdir).name}-{mode}.jsonl"
        run.main([f"--mode={mode}", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}",
                  "--config.generate.max_new_tokens=4"])
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["prompt"] for r in records] == ["Monday comes before", ""]
        assert all(len(r["completion_ids"]) <= 4 and r["finish_reason"] in ("eos", "length") for r in records)


def test_lora_trains_a_causal_lm(lm_dir, tmp_path):
    import transformers

    config = tiny_config("causal_lm", lm_dir, **{**LM_RUN, "train.num_epochs": 1, "lora.rank": 4,
                                                 "train.learning_rate": 1e-2})
    before = untrained_loss(config, tmp_path / "untrained")  # the base alone: the adapters start at zero
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["trainable_params"] == 4 * (64 + 3 * 64) + 4 * (64 + 64) + 4 * (64 + 256) + 4 * (256 + 64)
    # A random base with a frozen (tied) embedding learns slowly, but it learns.
    assert results["validation"]["loss"] < before - 0.1
    _, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "run" / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # adapters folded in: a plain GPT-2


def test_prompt_completion_run_scores_exact_match_through_the_hook(tmp_path, monkeypatch):
    rows = [{"prompt": f"the {name} after {items[i]} is", "completion": f" {items[(i + 1) % len(items)]} ."}
            for name, items in synthetic.CYCLES.items() for i in range(len(items))]
    for split in ("train", "validation", "test"):
        write(tmp_path / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    gold = {r["prompt"]: r["completion"] for r in rows}
    seen = []

    def complete(prompts):  # what generation would write: right for every other prompt
        seen.append(len(prompts))
        return [gold[p] if i % 2 else "?" for i, p in enumerate(prompts)]

    def fake_completions_fn(steps, tokenizer, config, params=None):
        return complete

    monkeypatch.setattr(evaluate, "completions_fn", fake_completions_fn)
    config = tiny_config("causal_lm", tmp_path, **{**LM_RUN, "train.max_steps": 3, "train.num_epochs": 1,
                                                   "generate.max_new_tokens": 8})  # within n_positions=32
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["test"]["exact_match"] == pytest.approx(sum(i % 2 for i in range(len(rows))) / len(rows))
    assert seen and set(seen) == {len(rows)}
    # Only the completions' tokens and their EOS were scored.
    tokenizer = load_run_tokenizer(tmp_path / "run" / "tokenizer", add_prefix_space=False)
    assert results["test"]["tokens"] == sum(len(tokenizer(r["completion"])["input_ids"]) + 1 for r in rows)
