"""Decoding: parity with transformers' PyTorch generate, the cache against the full forward pass,
sampling, stop conditions, buckets without recompiles, LoRA, and meshes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import gptjax
from gptjax import sharding
from gptjax.data import synthetic
from gptjax.data.examples import word_texts
from gptjax.decoding import Buckets, Generator, compilations
from gptjax.model import Decoder, GPT2Config, init_model
from gptjax.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EOS = 100
# Weights 25x GPT-2's initial scale: a tiny model at the usual scale repeats one token, which would
# make the comparisons below weak.
TINY = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64, eos_token_id=EOS, bos_token_id=EOS,
                  initializer_range=0.5)
PROMPTS = [[5, 17, 3], [9, 2, 44, 71, 8, 8, 30, 12, 1], [60], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24],
           [70, 3, 3, 9, 41, 2]]


@pytest.fixture(scope="module")
def model():
    return init_model(TINY, seed=3)


@pytest.fixture(scope="module")
def gen(model):
    return Generator(model, batch_size=4)


def ids(results):
    return [r.completion_ids for r in results]


@jax.jit
def _last_logits(model, tokens, mask):  # right-padded [1, 64] -> logits after the last real token
    return model(tokens, mask)[0, jnp.sum(mask) - 1]


def full_forward_greedy(model, prompt, n):
    """Greedy decoding with the plain (uncached) forward pass over the growing sequence."""
    seq = list(prompt)
    for _ in range(n):
        tokens = np.zeros((1, TINY.n_positions), np.int32)
        tokens[0, : len(seq)] = seq
        mask = (np.arange(TINY.n_positions) < len(seq)).astype(np.int32)[None]
        seq.append(int(jnp.argmax(_last_logits(model, jnp.asarray(tokens), jnp.asarray(mask)))))
    return seq[len(prompt):]


def torch_generate(directory, prompts, n, eos):
    """transformers' greedy generate on left-padded prompts (pad = EOS, with the attention mask)."""
    import torch  # here: the fast tier runs where torch is not installed

    reference = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    width = max(map(len, prompts))
    tokens = torch.full((len(prompts), width), EOS, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    with torch.no_grad():
        out = reference.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                 pad_token_id=EOS, eos_token_id=eos)
    completions = []
    for row in out[:, width:].tolist():
        completions.append(row[: row.index(eos) + 1] if eos in row else row)
    return completions


def test_greedy_matches_transformers_generate(model, gen, tmp_path):
    gptjax.save_pretrained(model, tmp_path)
    n = 12
    # First without EOS, then with a token those completions produce as EOS, so rows stop early.
    never = 99
    expected = torch_generate(tmp_path, PROMPTS, n, never)
    assert ids(gen.generate_ids(PROMPTS, max_new_tokens=n, eos_token_id=None)) == expected
    eos = expected[1][4]
    expected = torch_generate(tmp_path, PROMPTS, n, eos)
    got = gen.generate_ids(PROMPTS, max_new_tokens=n, eos_token_id=eos)
    assert [r.completion_ids + ([eos] if r.finish_reason == "eos" else []) for r in got] == expected
    assert got[1].finish_reason == "eos" and len(got[1].completion_ids) <= 4
    assert {r.finish_reason for r in got} <= {"eos", "length"}


@pytest.mark.fast
@pytest.mark.parametrize("dtype,tolerance", [("float32", 2e-5), ("bfloat16", 0.1)])
def test_cached_logits_match_full_forward(dtype, tolerance):
    model = init_model(TINY.replace(dtype=dtype), seed=3)
    graphdef, state = nnx.split(Decoder(model))
    decoder = jax.jit(lambda *args: nnx.merge(graphdef, state)(*args))
    p, steps = 16, 6
    cache = nnx.merge(graphdef, state).init_cache(len(PROMPTS), p + steps)
    tokens = np.full((len(PROMPTS), p), EOS, np.int32)
    mask = np.zeros((len(PROMPTS), p + steps), np.int32)
    for r, prompt in enumerate(PROMPTS):
        tokens[r, p - len(prompt):] = prompt
        mask[r, p - len(prompt):p] = 1
    lengths = mask.sum(1)
    positions = np.maximum(np.cumsum(mask[:, :p], 1) - 1, 0)
    logits, cache = decoder(jnp.asarray(tokens), jnp.asarray(positions), cache, jnp.int32(0), jnp.asarray(mask))
    sequences = [list(prompt) for prompt in PROMPTS]
    for t in range(steps + 1):
        for r, seq in enumerate(sequences):
            padded = np.zeros((1, TINY.n_positions), np.int32)
            padded[0, : len(seq)] = seq
            real = (np.arange(TINY.n_positions) < len(seq)).astype(np.int32)[None]
            full = _last_logits(model, jnp.asarray(padded), jnp.asarray(real))
            np.testing.assert_allclose(np.asarray(logits[r]), np.asarray(full), atol=tolerance, rtol=tolerance / 2,
                                       err_msg=f"step {t}, row {r}")
        if t == steps:
            break
        nxt = np.asarray(jnp.argmax(logits, -1), np.int32)
        for r, seq in enumerate(sequences):
            seq.append(int(nxt[r]))
        mask[:, p + t] = 1
        logits, cache = decoder(jnp.asarray(nxt[:, None]), jnp.asarray((lengths + t)[:, None]), cache,
                                jnp.int32(p + t), jnp.asarray(mask))


def test_greedy_equals_full_forward_and_lora_is_used(model):
    lora = init_model(TINY, seed=3)
    gptjax.add_lora(lora, rank=2, seed=1)
    b = lora.transformer.h.attn.c_attn.lora_b
    b[...] = 0.5 * jax.random.normal(jax.random.key(2), b.shape)  # adapters that change the outputs
    for m in (model, lora):
        got = ids(Generator(m).generate_ids(PROMPTS, max_new_tokens=8, eos_token_id=None))
        assert got == [full_forward_greedy(m, p, 8) for p in PROMPTS]
    assert got != ids(Generator(model).generate_ids(PROMPTS, max_new_tokens=8, eos_token_id=None))


def test_seeded_sampling_is_reproducible_and_batch_independent(gen):
    settings = dict(max_new_tokens=16, temperature=1.0, top_k=40, top_p=0.95, eos_token_id=None)
    alone = gen.generate_ids([PROMPTS[1]], seed=7, **settings)[0].completion_ids
    assert gen.generate_ids([PROMPTS[1]], seed=7, **settings)[0].completion_ids == alone
    # In a batch of others, at another row, next to rows with other seeds: the same completion.
    batch = gen.generate_ids([PROMPTS[3], PROMPTS[0], PROMPTS[1]], seed=[1, 2, 7], **settings)
    assert batch[2].completion_ids == alone
    assert gen.generate_ids([PROMPTS[1]], seed=8, **settings)[0].completion_ids != alone
    # Sampling (not greedy) happened: a high temperature strays from the greedy path.
    greedy = gen.generate_ids([PROMPTS[1]], max_new_tokens=16, eos_token_id=None)[0].completion_ids
    assert alone != greedy


def test_top_k_1_and_tiny_top_p_are_greedy(gen):
    greedy = ids(gen.generate_ids(PROMPTS, max_new_tokens=10, eos_token_id=None))
    for filters in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=5, top_p=1e-6)):
        sampled = gen.generate_ids(PROMPTS, max_new_tokens=10, eos_token_id=None, temperature=1.5, seed=3, **filters)
        assert ids(sampled) == greedy, filters


def test_stops_at_eos_stop_sequences_and_max_new_tokens(gen):
    full = gen.generate_ids(PROMPTS, max_new_tokens=12, eos_token_id=None)
    assert all(r.finish_reason == "length" and len(r.completion_ids) == 12 for r in full)
    row = full[1].completion_ids
    # EOS: the completion ends before it.
    eos = row[5]
    got = gen.generate_ids([PROMPTS[1]], max_new_tokens=12, eos_token_id=eos)[0]
    assert (got.completion_ids, got.finish_reason) == (row[: row.index(eos)], "eos")
    # A stop sequence of two tokens, and a stop token: the loop stops right after them.
    pair = row[6:8]
    first = next(j for j in range(len(row)) if row[j:j + 2] == pair)
    got = gen.generate_ids([PROMPTS[1]], max_new_tokens=12, eos_token_id=None, stop_sequences=[pair])[0]
    assert (got.completion_ids, got.finish_reason) == (row[: first + 2], "stop")
    table = np.zeros(TINY.vocab_size, bool)
    table[row[3]] = True
    got = gen.generate_ids([PROMPTS[1]], max_new_tokens=12, eos_token_id=None, stop_tokens=table)[0]
    assert (got.completion_ids, got.finish_reason) == (row[: row.index(row[3]) + 1], "stop")
    # Per-prompt budgets, and a budget of 0.
    got = gen.generate_ids(PROMPTS, max_new_tokens=[3, 0, 12, 1, 5], eos_token_id=None)
    assert [len(r.completion_ids) for r in got] == [3, 0, 12, 1, 5]
    assert ids(got)[2] == full[2].completion_ids and ids(got)[4] == full[4].completion_ids[:5]
    assert {r.finish_reason for r in got} == {"length"}


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["the cat sat on the mat.", "a dog ran home\nand slept", "hello world, stop here!"] * 10
    return train_tokenizer(texts, vocab_size=300)  # the 256 bytes, EOS and some merges


@pytest.fixture(scope="module")
def text_model(tokenizer):
    eos = tokenizer.eos_token_id
    return init_model(TINY.replace(vocab_size=len(tokenizer), eos_token_id=eos, bos_token_id=eos), seed=4)


def test_text_stop_strings_are_cut_exactly(text_model, tokenizer):
    gen = Generator(text_model, tokenizer)
    prompts = ["the cat", "hello", ""]  # an empty prompt starts from BOS
    full = gen.generate(prompts, max_new_tokens=20, eos_token_id=None)
    for r in full:
        assert r.finish_reason == "length" and r.completion == tokenizer.decode(r.completion_ids)
    text, row = full[0].completion, full[0].completion_ids
    pieces = [tokenizer.decode([t]) for t in row]
    # A stop string inside one token's text (caught in the loop), and one straddling two tokens.
    k = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 1)
    inside = pieces[k][-2:]
    straddle = pieces[k][-1] + pieces[k + 1][0]
    for stop in (inside, straddle):
        got = gen.generate([prompts[0]], max_new_tokens=20, eos_token_id=None, stop=[stop, "\x00never"])[0]
        assert got.finish_reason == "stop"
        assert got.completion == text[: text.find(stop)]
        assert stop in tokenizer.decode(got.completion_ids) and got.completion_ids == row[: len(got.completion_ids)]
        assert stop not in tokenizer.decode(got.completion_ids[:-1])
    assert gen.generate(prompts[:1], max_new_tokens=20, eos_token_id=None, stop="\x00never")[0].finish_reason == "length"


@pytest.mark.fast
def test_no_recompiles_across_mixed_requests(model):
    gen = Generator(model, batch_size=4, buckets=Buckets(batch=(4,), prompt=(16,), new_tokens=(8,)))
    rng = np.random.RandomState(0)
    gen.generate_ids([[1, 2]], max_new_tokens=1)
    before = compilations()
    for _ in range(100):
        rows = rng.randint(1, 5)
        prompts = [list(rng.randint(0, 100, rng.randint(1, 17))) for _ in range(rows)]
        gen.generate_ids(prompts, max_new_tokens=int(rng.randint(1, 9)), temperature=float(rng.choice([0.0, 0.7])),
                         top_k=int(rng.choice([0, 5])), top_p=float(rng.choice([1.0, 0.9])), seed=int(rng.randint(99)),
                         eos_token_id=int(rng.randint(100)), stop_sequences=[list(rng.randint(0, 100, 2))])
    assert compilations() == before


def test_on_a_one_device_mesh(model, gen):
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    got = Generator(model, mesh=mesh, batch_size=4).generate_ids(PROMPTS, max_new_tokens=6, eos_token_id=None)
    assert ids(got) == ids(gen.generate_ids(PROMPTS, max_new_tokens=6, eos_token_id=None))


MESH_SCRIPT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, sys.argv[1])
import jax
from gptjax import sharding
from gptjax.decoding import Generator
from gptjax.model import GPT2Config, init_model
model = init_model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64, initializer_range=0.5))
prompts = [[i + 1] * (1 + 2 * i) for i in range(8)]
out = {}
layouts = {"one": (None, jax.devices()[:1]), "eight": (None, jax.devices()),
           "data2_fsdp2_tensor2": (dict(data=2, fsdp=2, tensor=2), jax.devices())}
for name, (sizes, devices) in layouts.items():
    gen = Generator(model, mesh=sharding.make_mesh(sizes, devices), batch_size=8)
    out[name] = [[r.completion_ids for r in gen.generate_ids(prompts, max_new_tokens=10, eos_token_id=None, **s)]
                 for s in ({}, dict(temperature=1.0, top_k=20, seed=list(range(8))))]
    out[name + "_batch_bucket"] = gen.bucket_shapes(3, 5, 10)[0]
print(json.dumps(out))
"""


def test_identical_tokens_on_eight_device_meshes():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["one"] == out["eight"] == out["data2_fsdp2_tensor2"]
    assert out["eight_batch_bucket"] == 8  # the batch bucket is a multiple of the data axis
    assert out["data2_fsdp2_tensor2_batch_bucket"] == 4  # of data x fsdp


def test_errors(model):
    gen = Generator(model)
    with pytest.raises(ValueError, match="exceed the model's n_positions=64"):
        gen.generate_ids([[1] * 60], max_new_tokens=5)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate_ids([[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        gen.generate_ids([[1]], max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="seed: 2 values for 1 prompts"):
        gen.generate_ids([[1]], max_new_tokens=2, seed=[1, 2])
    with pytest.raises(ValueError, match="need a tokenizer"):
        gen.generate(["hi"])
    with pytest.raises(ValueError, match="causal_lm head"):
        Generator(init_model(TINY, "sequence_classification", num_labels=2))
    assert gen.generate_ids([]) == []


def test_one_call_api(text_model, tokenizer):
    model = text_model
    out = gptjax.generate(model, tokenizer, ["the cat", "a dog"], max_new_tokens=5, eos_token_id=None)
    assert [r.prompt for r in out] == ["the cat", "a dog"]
    assert all(len(r.completion_ids) == 5 and r.finish_reason == "length" for r in out)
    assert [r.completion_ids for r in out] == [r.completion_ids for r in gptjax.generate_ids(
        model, [tokenizer(p)["input_ids"] for p in ["the cat", "a dog"]], max_new_tokens=5, eos_token_id=None)]


# ---------------------------------------------------------------------------------------------
# --mode=generate


def _lm_checkpoint(directory):
    """A tiny GPT2LMHeadModel and its tokenizer laid out as a hub checkpoint is."""
    texts = word_texts(synthetic.make_ner_corpus(seed=0, sizes=(200, 1, 1))["train"])
    tokenizer = train_tokenizer(texts, vocab_size=300)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=48, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = gptjax.init_model(config, "causal_lm", seed=0)
    gptjax.save_pretrained(model, directory)
    tokenizer.save_pretrained(str(directory))
    return model, tokenizer


@pytest.mark.fast
def test_generate_mode_writes_one_completion_a_prompt(tmp_path):
    import json

    import run

    model, tokenizer = _lm_checkpoint(tmp_path / "lm")
    prompts = ["Hughes joined", "", "the " * 60]  # the last is too long for n_positions=48 with 6 new tokens
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    run.main(["--mode=generate", f"--model_dir={tmp_path / 'lm'}", f"--input={tmp_path / 'prompts.txt'}",
              f"--output={tmp_path / 'out.jsonl'}", "--config.generate.max_new_tokens=6"])
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3] and [o["prompt"] for o in out] == prompts
    assert [o["truncated"] for o in out] == [False, False, True]
    expected = gptjax.generate(model, tokenizer, prompts[:2], max_new_tokens=6)
    assert [o["completion_ids"] for o in out[:2]] == [r.completion_ids for r in expected]
    assert all(o["finish_reason"] in ("eos", "length", "stop") and len(o["completion_ids"]) <= 6 for o in out)


def test_generate_mode_refuses_a_classifier(tmp_path):
    import run

    model = gptjax.init_model(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=48, vocab_size=300),
                              "token_classification", labels=["O", "B-X", "I-X"])
    _, tokenizer = _lm_checkpoint(tmp_path / "lm")
    gptjax.save_pretrained(model, tmp_path / "tagger")
    tokenizer.save_pretrained(str(tmp_path / "tagger"))
    with pytest.raises(SystemExit, match="--mode=generate needs a causal-LM model"):
        run.main(["--mode=generate", f"--model_dir={tmp_path / 'tagger'}"])
