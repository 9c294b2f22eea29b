"""Learning check: gptjax and transformers' PyTorch fine-tune the same checkpoint on the same data.

    python benchmarks/learning_check.py [--out /tmp/learning_check] [--epochs 5] [--batch-size 16]
        [--learning-rate 1e-3] [--sizes 2000 400 400] [--seed 0]

What it checks. Parity tests show that gptjax computes the same logits as transformers; this
shows that it also *learns* like it. Both sides start from ONE tiny random-init GPT-2
checkpoint (built here with transformers and saved with its tokenizer), read the SAME CoNLL
files and train with the SAME hyperparameters:

- gptjax through its normal path: gptjax/configs/demo.py with model.init=pretrained pointing at the
  checkpoint, then gptjax.train.train_and_evaluate (results.json, metrics.jsonl).
- the reference: the seed project's recipe (GPT2ForTokenClassification, torch AdamW, shuffled
  batches, seqeval) but with correct label alignment: each word's label on its first subword,
  -100 on the other subwords and on padding.

Both evaluate on validation after every epoch with seqeval strict IOB2 entity F1 at word level,
keep the best epoch and report that epoch's test figures. The two F1 figures should land within
a few points of each other; they cannot match exactly, since the classifier head is newly
initialised on each side (from different random generators) and dropout masks and batch order
differ. The script prints a side-by-side table and writes everything to OUT/learning_check.json.

Runs offline (no Hugging Face Hub): the corpus is gptjax's synthetic NER corpus and the
tokenizer a byte-level BPE trained on it. The defaults take a few minutes on a 2-core CPU.
A figure, not a test: nothing fails when the numbers differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # gptjax/ at the top

from gptjax.config import apply_overrides, load_config  # noqa: E402
from gptjax.data import synthetic  # noqa: E402
from gptjax.data.encode import encode_token_split  # noqa: E402
from gptjax.data.examples import word_texts  # noqa: E402
from gptjax.data.labels import LabelVocab  # noqa: E402
from gptjax.data.readers import read_conll  # noqa: E402
from gptjax.tokenizer import train_tokenizer  # noqa: E402

log = logging.getLogger("learning_check")
SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------
# The shared starting point: a corpus and one checkpoint


def make_corpus(directory: Path, sizes, seed: int) -> Path:
    """train/validation/test.conll of the synthetic NER corpus."""
    corpus = synthetic.make_ner_corpus(seed=seed, sizes=tuple(sizes))
    return Path(synthetic.write_corpus(corpus, str(directory)))


def make_checkpoint(directory: Path, corpus_dir: Path, args) -> Path:
    """A tiny random-init GPT-2 (causal LM, no task head) and its tokenizer, in one directory."""
    import torch
    import transformers

    train = read_conll(str(corpus_dir / "train.conll"))
    tokenizer = train_tokenizer(word_texts(train), vocab_size=args.vocab_size)
    config = transformers.GPT2Config(
        n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=args.max_length,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # dropouts: GPT-2's 0.1 (embeddings, attention, residual); both sides keep them
    torch.manual_seed(args.seed)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(str(directory))
    return directory


def hyperparameters(args) -> dict:
    """The settings both sides train with, as gptjax config keys."""
    return {
        "train.learning_rate": args.learning_rate,
        "train.batch_size": args.batch_size,
        "train.eval_batch_size": args.eval_batch_size,
        "train.num_epochs": args.epochs,
        "train.warmup_ratio": args.warmup_ratio,
        "train.weight_decay": args.weight_decay,
        "train.max_grad_norm": 1.0,
        "train.adam_b1": 0.9,
        "train.adam_b2": 0.999,
        "train.adam_eps": 1e-8,
        "train.seed": args.seed,
        "data.max_length": args.max_length,
    }


# ---------------------------------------------------------------------------------------------
# gptjax, through its normal entry point


def run_gptjax(checkpoint: Path, corpus_dir: Path, hp: dict, workdir: Path) -> dict:
    from gptjax.train import train_and_evaluate

    overrides = {
        "model.init": "pretrained",
        "model.name_or_path": str(checkpoint),
        "tokenizer.name_or_path": "none",  # the checkpoint directory's own tokenizer
        "data.source": str(corpus_dir),
        **{key: str(value) for key, value in hp.items()},
    }
    config = apply_overrides(load_config("demo"), overrides)
    start = time.perf_counter()
    results = train_and_evaluate(config, str(workdir))
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {
        "validation_f1": [line["f1"] for line in lines if line["split"] == "validation"],
        "best_epoch": results["best_epoch"],
        "test": {k: results["test"][k] for k in ("f1", "precision", "recall", "lenient_f1")},
        "steps": results["steps"],
        "wall_s": wall,
    }


# ---------------------------------------------------------------------------------------------
# The PyTorch reference: the seed's recipe, with correct label alignment


def encode_reference(examples, tokenizer, label2id: dict, max_length: int) -> list[dict]:
    """Per example: input_ids, first-subword labels (-100 elsewhere) and word_ids."""
    enc = tokenizer([list(ex.tokens) for ex in examples], is_split_into_words=True,
                    truncation=True, max_length=max_length)
    out = []
    for i, ex in enumerate(examples):
        word_ids = enc.word_ids(i)
        labels, previous = [], None
        for w in word_ids:
            # Only a word's first subword carries its label; continuations and specials are ignored.
            labels.append(-100 if w is None or w == previous else label2id[ex.tags[w]])
            previous = w
        out.append({"input_ids": enc["input_ids"][i], "labels": labels, "word_ids": word_ids})
    return out


def collate(items: list[dict], pad_id: int):
    """Right padding to the batch's longest row with the EOS id; mask 0 and label -100 there."""
    import torch

    T = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    labels = torch.full((len(items), T), -100, dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n] = torch.tensor(it["input_ids"])
        mask[r, :n] = 1
        labels[r, :n] = torch.tensor(it["labels"])
    return ids, mask, labels


def evaluate_reference(model, encoded, examples, id2label: dict, batch_size: int, pad_id: int) -> dict:
    """seqeval strict IOB2 entity P/R/F1 over words: each word takes its first subword's prediction;
    a word cut off by max_length counts as O (as gptjax does)."""
    import torch
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    model.eval()
    gold, pred = [], []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            items = encoded[start:start + batch_size]
            ids, mask, _ = collate(items, pad_id)
            argmax = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
            for row, it in enumerate(items):
                ex = examples[start + row]
                tags = ["O"] * len(ex.tokens)
                previous = None
                for position, w in enumerate(it["word_ids"]):
                    if w is not None and w != previous:
                        tags[w] = id2label[argmax[row][position]]
                    previous = w
                gold.append(list(ex.tags))
                pred.append(tags)
    strict = dict(mode="strict", scheme=IOB2, zero_division=0)
    return {
        "f1": f1_score(gold, pred, **strict),
        "precision": precision_score(gold, pred, **strict),
        "recall": recall_score(gold, pred, **strict),
        "lenient_f1": f1_score(gold, pred, zero_division=0),  # seqeval default mode (conlleval)
    }


def decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices and embeddings, none on biases or
    LayerNorm (GPT-2 names its LayerNorms ln_*, so the usual "LayerNorm.weight" name rule would
    miss them); the same split as gptjax's decay_mask (kernels and embeddings only)."""
    import torch

    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, torch.nn.LayerNorm):
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run_reference(checkpoint: Path, corpus_dir: Path, hp: dict, label_names: list[str]) -> dict:
    import torch
    import transformers

    torch.set_num_threads(2)
    start = time.perf_counter()
    seed = hp["train.seed"]
    splits = {s: read_conll(str(corpus_dir / f"{s}.conll")) for s in SPLITS}
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint), add_prefix_space=True)
    pad_id = tokenizer.eos_token_id  # GPT-2 has no pad token
    encoded = {s: encode_reference(ex, tokenizer, label2id, hp["data.max_length"]) for s, ex in splits.items()}

    torch.manual_seed(seed)  # the new classifier head draws from this
    model = transformers.GPT2ForTokenClassification.from_pretrained(
        str(checkpoint), num_labels=len(label_names), id2label=id2label, label2id=label2id,
    )
    batch_size, epochs = hp["train.batch_size"], hp["train.num_epochs"]
    steps_per_epoch = math.ceil(len(encoded["train"]) / batch_size)  # a DataLoader keeps the last batch
    total_steps = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(
        decay_groups(model, hp["train.weight_decay"]), lr=hp["train.learning_rate"],
        betas=(hp["train.adam_b1"], hp["train.adam_b2"]), eps=hp["train.adam_eps"],
    )
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(hp["train.warmup_ratio"] * total_steps), total_steps)
    order_rng = torch.Generator().manual_seed(seed)

    val_f1, best = [], {"f1": -1.0}
    for epoch in range(epochs):
        model.train()  # dropout on, as in the checkpoint's config
        order = torch.randperm(len(encoded["train"]), generator=order_rng).tolist()
        losses = []
        for s in range(0, len(order), batch_size):
            ids, mask, labels = collate([encoded["train"][i] for i in order[s:s + batch_size]], pad_id)
            # CrossEntropyLoss's mean over labels != -100: the same masked mean as gptjax.
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp["train.max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        val = evaluate_reference(model, encoded["validation"], splits["validation"], id2label,
                                 hp["train.eval_batch_size"], pad_id)
        val_f1.append(val["f1"])
        log.info("reference epoch %d: train loss %.4f, validation F1 %.4f", epoch + 1, np.mean(losses), val["f1"])
        if val["f1"] > best["f1"]:
            # The best epoch's weights, as gptjax keeps its best epoch for the test evaluation.
            best = {"f1": val["f1"], "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best["state"])
    test = evaluate_reference(model, encoded["test"], splits["test"], id2label, hp["train.eval_batch_size"], pad_id)
    return {
        "validation_f1": val_f1,
        "best_epoch": best["epoch"],
        "test": test,
        "steps": total_steps,
        "wall_s": time.perf_counter() - start,
    }


def same_token_ids(checkpoint: Path, corpus_dir: Path, label_names: list[str], max_length: int) -> dict:
    """Whether gptjax's pipeline and the reference's feed the models the same ids and labels."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint), add_prefix_space=True)
    vocab = LabelVocab(label_names)
    out = {}
    for split in SPLITS:
        examples = read_conll(str(corpus_dir / f"{split}.conll"))
        ours = encode_token_split(examples, tokenizer, vocab, max_length)
        ref = encode_reference(examples, tokenizer, vocab.label2id, max_length)
        out[split] = sum(
            list(a) != r["input_ids"] or list(b) != r["labels"]
            for a, b, r in zip(ours.input_ids, ours.labels, ref)
        )
    return out  # split -> number of examples that differ


# ---------------------------------------------------------------------------------------------
# Report


def table(results: dict, hp: dict) -> str:
    g, r = results["gptjax"], results["pytorch"]
    rows = [("", "gptjax", "pytorch")]
    for e in range(max(len(g["validation_f1"]), len(r["validation_f1"]))):
        cells = [f"{side['validation_f1'][e]:.4f}" if e < len(side["validation_f1"]) else "-" for side in (g, r)]
        rows.append((f"validation F1, epoch {e + 1}", *cells))
    rows += [
        ("best epoch", str(g["best_epoch"]), str(r["best_epoch"])),
        ("test F1 (strict IOB2)", f"{g['test']['f1']:.4f}", f"{r['test']['f1']:.4f}"),
        ("test precision", f"{g['test']['precision']:.4f}", f"{r['test']['precision']:.4f}"),
        ("test recall", f"{g['test']['recall']:.4f}", f"{r['test']['recall']:.4f}"),
        ("test F1 (lenient, conlleval)", f"{g['test']['lenient_f1']:.4f}", f"{r['test']['lenient_f1']:.4f}"),
        ("optimizer steps", str(g["steps"]), str(r["steps"])),
        ("wall time (s)", f"{g['wall_s']:.0f}", f"{r['wall_s']:.0f}"),
    ]
    width = max(len(row[0]) for row in rows)
    lines = [f"{a:<{width}}  {b:>8}  {c:>8}" for a, b, c in rows]
    settings = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in hp.items())
    differ = results["examples_encoded_differently"]
    lines += [
        "",
        f"shared: {settings}",
        f"data: {results['corpus_sizes']} sentences (train/validation/test); examples the two "
        f"pipelines encode differently: {differ}",
        "gptjax's wall time includes XLA compilation; both include tokenisation and evaluation.",
        f"test F1 difference (gptjax - pytorch): {g['test']['f1'] - r['test']['f1']:+.4f}",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/learning_check", type=Path)
    parser.add_argument("--sizes", nargs=3, type=int, default=(2000, 400, 400), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=64, help="tokens; also the checkpoint's n_positions")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1000, help="of the BPE tokenizer trained here")
    parser.add_argument("--seed", type=int, default=0, help="corpus, checkpoint, head, order, dropout")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = args.out
    for sub in ("data", "checkpoint", "gptjax"):  # only what this script writes is replaced
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    corpus_dir = make_corpus(out / "data", args.sizes, args.seed)
    checkpoint = make_checkpoint(out / "checkpoint", corpus_dir, args)
    hp = hyperparameters(args)

    log.info("training gptjax from %s", checkpoint)
    results = {"corpus_sizes": list(args.sizes), "hyperparameters": hp,
               "gptjax": run_gptjax(checkpoint, corpus_dir, hp, out / "gptjax")}
    # The label vocabulary gptjax built from the train split: the reference uses the same ids.
    label_names = LabelVocab.load(str(out / "gptjax" / "labels.json")).names
    train = read_conll(str(corpus_dir / "train.conll"))
    assert label_names == LabelVocab.from_tags(train).names
    results["examples_encoded_differently"] = same_token_ids(checkpoint, corpus_dir, label_names, args.max_length)

    log.info("training the PyTorch reference from %s", checkpoint)
    results["pytorch"] = run_reference(checkpoint, corpus_dir, hp, label_names)

    text = table(results, hp)
    print("\n" + text)
    (out / "learning_check.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "learning_check.txt").write_text(text + "\n", encoding="utf-8")
    print(f"\nwritten to {out / 'learning_check.json'}")


if __name__ == "__main__":
    main()
