"""The train step's pieces: the masked loss, the optimizer, gradient accumulation, dropout keys."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax import sharding
import math

import pytest

from gptjax.config import apply_overrides, base_config, config_json, validate
from gptjax.errors import ConfigError
from gptjax.model import GPT2Config, init_model
import optax

from gptjax.steps import (clip_by_global_norm, decay_mask, init_state, make_optimizer, make_train_step,
                          masked_cross_entropy, schedule_changes)

TINY = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16)


def test_masked_cross_entropy_by_hand():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = jnp.array([[0, 2, -100]])
    total, count = masked_cross_entropy(logits, labels)
    expected = -np.log(np.exp(2) / (np.exp(2) + 2)) - np.log(1 / (np.exp(1) + 2))
    assert int(count) == 2
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    # Sequence labels [B] with a padding row.
    total, count = masked_cross_entropy(jnp.array([[0.0, 3.0], [1.0, 1.0]]), jnp.array([1, -100]))
    assert int(count) == 1
    np.testing.assert_allclose(float(total), np.log(1 + np.exp(-3)), rtol=1e-6)


def test_weight_decay_on_matrices_only():
    params = nnx.state(init_model(TINY, "token_classification", num_labels=3), nnx.Param)
    mask = nnx.to_pure_dict(decay_mask(params))
    h = mask["transformer"]["h"]
    assert h["attn"]["c_attn"]["kernel"] and h["mlp"]["c_proj"]["kernel"]
    assert mask["transformer"]["wte"]["embedding"] and mask["classifier"]["kernel"]
    assert not h["attn"]["c_attn"]["bias"] and not h["ln_1"]["scale"] and not h["ln_1"]["bias"]
    assert not mask["transformer"]["ln_f"]["scale"] and not mask["classifier"]["bias"]


def test_schedule_warms_up_then_decays():
    cfg = base_config().train
    cfg.learning_rate, cfg.warmup_steps = 1e-3, 10
    _, schedule = make_optimizer(cfg, 110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(60)), 5e-4, rtol=1e-5)
    assert float(schedule(110)) == 0.0


def _schedule(kind, total=110, warmup_steps=10, warmup_ratio=None):
    cfg = base_config().train
    cfg.learning_rate, cfg.schedule, cfg.warmup_steps = 1e-3, kind, warmup_steps
    if warmup_ratio is not None:
        cfg.warmup_ratio = warmup_ratio
    return make_optimizer(cfg, total)[1]


@pytest.mark.parametrize("kind, after_warmup", [
    ("linear", lambda s: 1e-3 * (110 - s) / 100),
    ("cosine", lambda s: 1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 100))),
    ("constant", lambda s: 1e-3),
])
def test_each_schedule_follows_its_formula(kind, after_warmup):
    # transformers' get_{linear,cosine,constant}_schedule_with_warmup: peak * step / warmup first.
    schedule = _schedule(kind)
    for step in (0, 3, 5, 9):
        np.testing.assert_allclose(float(schedule(step)), 1e-3 * step / 10, rtol=1e-5, atol=1e-12)
    for step in (10, 35, 60, 87, 109, 110):
        np.testing.assert_allclose(float(schedule(step)), after_warmup(step), rtol=1e-5, atol=1e-9)  # float32
    # warmup_ratio sets the warm-up when warmup_steps is unset: 0.2 of 50 steps.
    ratio = _schedule(kind, total=50, warmup_steps=None, warmup_ratio=0.2)
    np.testing.assert_allclose(float(ratio(5)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(ratio(10)), 1e-3, rtol=1e-5)


def test_the_torch_recipe_is_expressible():
    # The seed's PyTorch recipe: constant lr 1e-3 from the first step, no weight decay, no clipping.
    config = validate(apply_overrides(base_config(), {
        "train.schedule": "constant", "train.warmup_ratio": "0", "train.learning_rate": "1e-3",
        "train.weight_decay": "0", "train.max_grad_norm": "0"}))
    tx, schedule = make_optimizer(config.train, 100)
    assert [float(schedule(s)) for s in (0, 1, 50, 99)] == [float(np.float32(1e-3))] * 4
    big = {"kernel": jnp.full((2, 3), 100.0), "bias": jnp.full((3,), -50.0)}
    params = jax.tree.map(jnp.ones_like, big)
    ours, _ = tx.update(big, tx.init(params), params)
    adam = optax.adam(1e-3)
    want, _ = adam.update(big, adam.init(params), params)
    for g, w in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-6)  # unclipped Adam: no clip, no decay
    clipped = make_optimizer(base_config().train, 100)[0]  # max_grad_norm=1 keeps the same state structure
    assert jax.tree.structure(clipped.init(params)) == jax.tree.structure(tx.init(params))
    with pytest.raises(ConfigError, match="train.schedule='step'"):
        validate(apply_overrides(base_config(), {"train.schedule": "step"}))
    with pytest.raises(ConfigError, match="train.max_grad_norm=-1.0"):
        validate(apply_overrides(base_config(), {"train.max_grad_norm": "-1"}))


def test_schedule_changes_name_the_key_and_the_new_lr():
    def config(**changes):  # a run of 50 steps an epoch at lr 1e-3 without warm-up, as the checkpoint's
        values = {"train.learning_rate": "1e-3", "train.warmup_steps": "0", "train.num_epochs": "2"}
        return apply_overrides(base_config(), {**values, **{f"train.{k}": v for k, v in changes.items()}})

    saved = config_json(config())
    assert schedule_changes(saved, config(), 50, 65) == []  # 2 epochs of 50 steps, as saved
    (line,) = schedule_changes(saved, config(num_epochs="3"), 50, 65)
    # linear decay: 1e-3 * (100 - 65) / 100 before, 1e-3 * (150 - 65) / 150 now
    assert "length changed from 100 to 150 steps" in line and "step 66 becomes 0.000567 (was 0.00035)" in line
    assert "from 100 to 80 steps" in schedule_changes(saved, config(max_steps="80"), 50, 65)[0]
    (line,) = schedule_changes(saved, config(learning_rate="5e-4", schedule="constant"), 50, 65)
    assert "train.schedule 'linear' -> 'constant'" in line and "train.learning_rate 0.001 -> 0.0005" in line
    assert "step 66 becomes 0.0005 (was 0.00035)" in line
    assert "train.max_grad_norm 1.0 -> 0.0" in schedule_changes(saved, config(max_grad_norm="0"), 50, 65)[0]
    assert len(schedule_changes(saved, config(num_epochs="3", adam_b2="0.98"), 50, 65)) == 2
    # A checkpoint from before train.schedule existed was made with the linear default.
    del saved["train"]["schedule"]
    assert schedule_changes(saved, config(), 50, 65) == []


def test_clip_by_global_norm_matches_optax():
    # Scaled by min(1, max_norm / norm) in one multiply: optax's result to rounding, its (empty)
    # state, so checkpoints keep their structure; small gradients pass through bit for bit.
    grads = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.array([-3.0, 4.0])}}
    norm = float(optax.tree.norm(grads))
    for max_norm in (0.5, norm / 2, 2 * norm):
        ours, theirs = clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
        state = ours.init(grads)
        assert jax.tree.structure(state) == jax.tree.structure(theirs.init(grads))
        got, _ = ours.update(grads, state)
        want, _ = theirs.update(grads, theirs.init(grads))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-6)
        np.testing.assert_allclose(float(optax.tree.norm(got)), min(norm, max_norm), rtol=1e-6)
    unclipped, _ = clip_by_global_norm(2 * norm).update(grads, None)
    for g, w in zip(jax.tree.leaves(unclipped), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(g, w)
    zeros = jax.tree.map(jnp.zeros_like, grads)
    for g in jax.tree.leaves(clip_by_global_norm(1.0).update(zeros, None)[0]):
        np.testing.assert_array_equal(g, 0.0)  # a zero norm neither divides by zero nor makes NaN
    nan = {"a": jnp.array([jnp.nan, 1.0])}
    assert np.isnan(clip_by_global_norm(1.0).update(nan, None)[0]["a"]).all()  # a NaN is not hidden


def _batch(seed=0, rows=8, length=12):
    rng = np.random.RandomState(seed)
    mask = np.ones((rows, length), np.int32)
    for r in range(rows):
        mask[r, rng.randint(3, length + 1):] = 0
    labels = np.where(mask == 1, rng.randint(0, 3, (rows, length)), -100).astype(np.int32)
    labels[:, ::3] = -100  # continuation subwords
    return {"input_ids": rng.randint(0, 50, (rows, length)).astype(np.int32), "attention_mask": mask, "labels": labels}


def _run(accum, steps=3, dropout=0.0, seed=0, vary_batch=True):
    cfg = base_config().train
    cfg.learning_rate, cfg.warmup_steps = 1e-2, 0
    model = init_model(TINY.replace(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout),
                       "token_classification", num_labels=3, seed=0)
    tx, _ = make_optimizer(cfg, 100)
    mesh = sharding.make_mesh()
    graphdef, state = init_state(model, tx, mesh)
    step = make_train_step(graphdef, tx, seed=seed, grad_accum_steps=accum)
    losses = []
    for i in range(steps):
        state, metrics = step(state, sharding.put_batch(_batch(i if vary_batch else 0), mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


def test_gradient_accumulation_matches_one_big_batch():
    # The loss is a masked mean over all labelled positions of the batch, however it is split.
    big_losses, big = _run(accum=1)
    acc_losses, acc = _run(accum=4)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(big), jax.tree.leaves(acc)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)  # Adam amplifies summation-order noise in near-zero gradients


def test_training_reduces_the_loss_and_is_deterministic():
    losses, params = _run(accum=1, steps=12, dropout=0.1, vary_batch=False)
    again, params_again = _run(accum=1, steps=12, dropout=0.1, vary_batch=False)
    assert losses == again
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again)):
        np.testing.assert_array_equal(a, b)
    assert losses[-1] < losses[0]
    other_seed, _ = _run(accum=1, steps=12, dropout=0.1, seed=1, vary_batch=False)
    assert other_seed != losses  # dropout keys come from the seed


def test_train_step_compiles_once_per_shape():
    cfg = base_config().train
    model = init_model(TINY, "token_classification", num_labels=3)
    tx, _ = make_optimizer(cfg, 10)
    mesh = sharding.make_mesh()
    graphdef, state = init_state(model, tx, mesh)
    step = make_train_step(graphdef, tx, seed=0)
    for i in range(3):
        state, _ = step(state, sharding.put_batch(_batch(i), mesh))
    assert step._cache_size() == 1
    state, _ = step(state, sharding.put_batch(_batch(0, length=8), mesh))
    assert step._cache_size() == 2
