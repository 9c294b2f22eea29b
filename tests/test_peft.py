"""Freezing and LoRA: what trains, what stays bit-identical, what the optimizer and checkpoints hold."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file

from conftest import tiny_config
from gptjax import sharding, train
from gptjax.config import validate
from gptjax.lora import TARGETS, add_lora, lora_layers, merge_lora
from gptjax.partition import Partition, adapt, config_partition, count
from gptjax.checkpoint import PreemptionGuard, Preempted
from gptjax.config import apply_overrides, base_config
from gptjax.errors import ConfigError
from gptjax.hf import save_pretrained
from gptjax.model import GPT2Config, init_model
from gptjax.steps import init_train_state, make_optimizer, make_train_step

TINY = GPT2Config(n_layer=3, n_embd=32, n_head=4, n_inner=48, vocab_size=50, n_positions=16)
LABELS = 3


def _batch(seed, rows=8, length=12):
    rng = np.random.RandomState(seed)
    mask = np.ones((rows, length), np.int32)
    mask[:, rng.randint(4, length):] = 0
    labels = np.where(mask == 1, rng.randint(0, LABELS, (rows, length)), -100).astype(np.int32)
    return {"input_ids": rng.randint(0, 50, (rows, length)).astype(np.int32), "attention_mask": mask, "labels": labels}


def _config(**overrides):
    return apply_overrides(base_config(), {k: str(v) for k, v in overrides.items()})


def _train(config, steps=4, dropout=0.0):
    """A few optimizer steps on the TINY model as the config shapes it: (partition, model before,
    final state, frozen)."""
    model = init_model(TINY.replace(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout),
                       "token_classification", num_labels=LABELS, seed=0)
    model = adapt(model, config)
    before = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    cfg = config.train
    cfg.learning_rate, cfg.warmup_steps = 1e-2, 0
    tx, _ = make_optimizer(cfg, 100)
    mesh = sharding.make_mesh()
    partition = config_partition(config, model)
    graphdef, state, frozen = init_train_state(model, tx, mesh, partition)
    step = make_train_step(graphdef, tx, seed=0, partition=partition)
    for i in range(steps):
        state, metrics = step(state, sharding.put_batch(_batch(i), mesh), frozen)
        assert np.isfinite(float(metrics["loss"]))
    return partition, graphdef, before, state, frozen


def _flat(tree):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.traversals.flatten_mapping(tree).items()}


def _opt_leaves(opt_state):
    """Adam's first-moment tree: one leaf per parameter that has optimizer state."""
    mu = [s.mu for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
    assert len(mu) == 1
    return _flat(nnx.to_pure_dict(mu[0]))


@pytest.mark.parametrize("freeze", ["head_only", "top_k"])
def test_frozen_weights_stay_bit_identical_and_have_no_optimizer_state(freeze):
    overrides = {"train.freeze": freeze}
    if freeze == "top_k":
        overrides["train.trainable_blocks"] = 1
    partition, graphdef, before, state, frozen = _train(_config(**overrides))
    after = _flat(nnx.to_pure_dict(partition.merge(jax.device_get(state.params), jax.device_get(frozen))))
    before = _flat(before)
    assert after.keys() == before.keys()
    trainable = _flat(nnx.to_pure_dict(state.params))
    for name, value in before.items():
        if name.startswith("classifier") or (freeze == "top_k" and name.startswith("transformer/ln_f")):
            assert not np.array_equal(after[name], value), f"{name} should have trained"
        elif freeze == "top_k" and name.startswith("transformer/h/"):
            np.testing.assert_array_equal(after[name][:2], value[:2], err_msg=name)  # the bottom two blocks
            assert trainable[name].shape[0] == 1
            if "kernel" in name:
                assert not np.array_equal(after[name][2:], value[2:]), f"{name}'s top block should have trained"
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)  # bit for bit
    # Optimizer state exists for exactly the trainable parameters, with their (sliced) shapes.
    moments = _opt_leaves(state.opt_state)
    assert moments.keys() == trainable.keys()
    assert all(moments[k].shape == trainable[k].shape for k in moments)
    expected = {"head_only": {"classifier/bias", "classifier/kernel"}}.get(freeze)
    if expected:
        assert set(trainable) == expected
    else:
        assert not any(k.startswith(("transformer/wte", "transformer/wpe")) for k in trainable)


def test_top_k_backward_pass_skips_the_frozen_blocks():
    model = adapt(init_model(TINY, "token_classification", num_labels=LABELS),
                  _config(**{"train.freeze": "top_k", "train.trainable_blocks": 1}))
    graphdef, params = nnx.split(model)
    partition = Partition("top_k", 2)
    trainable, frozen = partition.split(params)
    batch = _batch(0)

    def loss(t):
        model = nnx.merge(graphdef, partition.merge(t, frozen))
        return jnp.sum(model(batch["input_ids"], batch["attention_mask"], frozen_layers=partition.frozen_layers) ** 2)

    # Forward: the frozen blocks' scan and the trained block's; backward: the trained block's alone.
    assert str(jax.make_jaxpr(jax.grad(loss))(trainable)).count("scan[") == 3
    # And splitting the scan does not change the forward pass.
    plain = init_model(TINY, "token_classification", num_labels=LABELS)
    np.testing.assert_array_equal(model(batch["input_ids"], batch["attention_mask"], frozen_layers=partition.frozen_layers),
                                  plain(batch["input_ids"], batch["attention_mask"]))


def _lora_by_hand(rank, targets, n_layer=TINY.n_layer, d=TINY.n_embd, inner=TINY.n_inner, labels=LABELS):
    """r * (in + out) for each target of each block, plus the head (classifier kernel and bias)."""
    shapes = {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, inner), "mlp.c_proj": (inner, d)}
    adapters = sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets) * n_layer
    return adapters + d * labels + labels


def test_lora_trains_exactly_the_adapters_and_the_head():
    rank, targets = 4, TARGETS
    config = _config(**{"lora.rank": rank, "lora.dropout": 0.1})
    partition, graphdef, before, state, frozen = _train(config, dropout=0.1)
    assert count(state.params) == _lora_by_hand(rank, targets)
    assert count(_opt_leaves(state.opt_state)) == _lora_by_hand(rank, targets)
    trainable = _flat(nnx.to_pure_dict(state.params))
    assert all(k.startswith("classifier") or k.endswith(("lora_a", "lora_b")) for k in trainable)
    assert trainable["transformer/h/attn/c_attn/lora_a"].shape == (TINY.n_layer, TINY.n_embd, rank)
    # The base model, embeddings to LayerNorms, is bit for bit what it was.
    frozen = _flat(nnx.to_pure_dict(jax.device_get(frozen)))
    before = _flat(before)
    assert frozen and all(np.array_equal(v, before[k]) for k, v in frozen.items())
    assert not any(k.endswith(("lora_a", "lora_b")) for k in frozen)


def test_lora_on_some_targets():
    targets = ("attn.c_attn", "mlp.c_proj")
    config = _config(**{"lora.rank": 2, "lora.targets": str(targets)})
    model = adapt(init_model(TINY, "token_classification", num_labels=LABELS), config)
    trainable, _ = config_partition(config, model).split(nnx.state(model, nnx.Param))
    assert count(trainable) == _lora_by_hand(2, targets)
    assert sorted(path[:-1] for path in lora_layers(model)) == [("transformer", "h", "attn"), ("transformer", "h", "mlp")]


def test_lora_starts_equal_to_the_base_model():
    batch = _batch(1)
    base = init_model(TINY, "token_classification", num_labels=LABELS, seed=0)
    expected = base(batch["input_ids"], batch["attention_mask"])
    adapted = add_lora(base, rank=4, alpha=8.0)
    np.testing.assert_array_equal(adapted(batch["input_ids"], batch["attention_mask"]), expected)  # B = 0


def test_merged_export_is_the_base_plus_scaled_adapters(tmp_path):
    config = _config(**{"lora.rank": 4, "lora.alpha": 8.0})
    partition, graphdef, before, state, frozen = _train(config)
    model = nnx.merge(graphdef, partition.merge(state.params, frozen))
    save_pretrained(model, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    params = _flat(nnx.to_pure_dict(jax.device_get(state.params)))
    before = _flat(before)
    for target in TARGETS:
        stem = "transformer/h/" + target.replace(".", "/")
        a, b = params[f"{stem}/lora_a"].astype(np.float64), params[f"{stem}/lora_b"].astype(np.float64)
        assert np.abs(b).max() > 0  # the adapters trained
        for i in range(TINY.n_layer):
            expected = before[f"{stem}/kernel"][i] + (8.0 / 4) * a[i] @ b[i]
            got = saved[f"transformer.h.{i}.{target}.weight"]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{target} layer {i}")
            np.testing.assert_array_equal(saved[f"transformer.h.{i}.{target}.bias"], before[f"{stem}/bias"][i])
    np.testing.assert_array_equal(saved["transformer.wte.weight"], before["transformer/wte/embedding"])
    # The merged plain model computes what the adapted one does.
    batch = _batch(2)
    merged = merge_lora(model)
    assert not lora_layers(merged) and lora_layers(model)  # the adapted model is left as it was
    np.testing.assert_allclose(merged(batch["input_ids"], batch["attention_mask"]),
                               model(batch["input_ids"], batch["attention_mask"]), atol=2e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"lora.rank": 4, "train.freeze": "top_k", "train.trainable_blocks": 1}, "LoRA already freezes the whole base"),
    ({"lora.rank": 4, "train.freeze": "head_only"}, "leave train.freeze='none'"),
    ({"train.freeze": "top_k"}, "needs train.trainable_blocks"),
    ({"train.trainable_blocks": 2}, "applies only with train.freeze='top_k'"),
    ({"train.freeze": "bottom"}, "train.freeze='bottom': choose one of"),
    ({"lora.rank": -1}, "lora.rank=-1"),
    ({"lora.rank": 4, "lora.targets": "('attn.c_attn', 'mlp.fc')"}, "lora.targets"),
    ({"lora.rank": 4, "lora.dropout": 1.0}, "lora.dropout=1.0"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(_config(**overrides))


def test_more_trainable_blocks_than_the_model_has():
    config = _config(**{"train.freeze": "top_k", "train.trainable_blocks": 4})
    with pytest.raises(ConfigError, match="train.trainable_blocks=4 exceeds the model's 3 blocks"):
        adapt(init_model(TINY, "token_classification", num_labels=LABELS), config)


# ---------------------------------------------------------------------------------------------
# A LoRA run end to end: checkpoints hold only what trains, and it resumes bit for bit.


LORA_RUN = {"lora.rank": 4, "lora.alpha": 8.0, "lora.dropout": 0.1, "model.dropout": 0.0, "train.num_epochs": 1,
            "train.learning_rate": 1e-2, "checkpoint.every_steps": 5, "data.buckets": "(64,)", "tokenizer.vocab_size": 300}


@pytest.fixture(scope="module")
def lora_reference(small_ner, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora_reference")
    return workdir, train.train_and_evaluate(tiny_config("token", small_ner, **LORA_RUN), str(workdir))


def _saved_state(workdir):
    from test_checkpoint import final_state

    return final_state(workdir)


def _metrics(workdir):
    from test_checkpoint import metrics_without_timing

    return metrics_without_timing(workdir)


def _meta(workdir, step):
    import orbax.checkpoint as ocp

    from gptjax.checkpoint import Checkpoints

    checkpoints = Checkpoints(workdir)
    try:
        return checkpoints.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    finally:
        checkpoints.close()


def test_lora_run_checkpoints_only_what_trains_and_resumes_exactly(lora_reference, small_ner, tmp_path, monkeypatch):
    reference, results = lora_reference
    config = tiny_config("token", small_ner, **LORA_RUN)
    assert results["trainable_params"] == _lora_by_hand(4, TARGETS, n_layer=1, d=64, inner=256, labels=9)
    assert results["total_params"] > 10 * results["trainable_params"]
    saved = json.loads((reference / "results.json").read_text())
    assert saved["trainable_params"] == results["trainable_params"] and saved["total_params"] == results["total_params"]

    # A checkpoint: the adapters and the head, their optimizer state, the step; the base's identity.
    step, arrays = _saved_state(reference)
    params = {k for k in arrays if k.startswith("['params']")}
    assert params and all("lora_a" in k or "lora_b" in k or "classifier" in k for k in params)
    meta = _meta(reference, step)
    assert meta["config"]["model"]["init"] == "scratch" and meta["config"]["train"]["seed"] == 0
    assert meta["config"]["lora"]["rank"] == 4 and len(meta["base"]["transformer/wte/embedding"]) == 2

    # Stopped after step 7 as if preempted, then the same command: the same run, bit for bit.
    real = PreemptionGuard.requested
    monkeypatch.setattr(PreemptionGuard, "requested", lambda self, step: step == 7 or real(self, step))
    with pytest.raises(Preempted):
        train.train_and_evaluate(config, str(tmp_path / "resumed"))
    monkeypatch.undo()
    assert max(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.name.isdigit()) == 7
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    resumed_step, resumed = _saved_state(tmp_path / "resumed")
    assert resumed_step == step and resumed.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(resumed[key], arrays[key], err_msg=key)
    assert json.loads((tmp_path / "resumed" / "results.json").read_text()) == saved
    assert _metrics(tmp_path / "resumed") == _metrics(reference)


def test_resume_refuses_another_base(lora_reference, small_ner, tmp_path, monkeypatch):
    shutil.copytree(lora_reference[0], tmp_path, dirs_exist_ok=True)
    config = tiny_config("token", small_ner, **{**LORA_RUN, "train.num_epochs": 2})
    # Another LoRA rank changes what trains: refused by the config check, naming the key.
    other = tiny_config("token", small_ner, **{**LORA_RUN, "lora.rank": 8})
    with pytest.raises(ConfigError, match="lora.rank=4"):
        train.train_and_evaluate(other, str(tmp_path))
    # The same config over different base weights: refused by the checksum.
    original = adapt

    def other_base(model, config):
        model.transformer.wte.embedding.set_value(model.transformer.wte.embedding[...] * 2)
        return original(model, config)

    monkeypatch.setattr("gptjax.partition.adapt", other_base)
    with pytest.raises(ConfigError, match="frozen base model differs"):
        train.train_and_evaluate(config, str(tmp_path))
