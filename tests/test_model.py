"""The GPT-2 module itself: shapes, masking, dropout, initialisation, sizes."""

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from gptjax.dropout import _counters, dropout, threefry_2x32
from gptjax.model import SIZES, GPT2Config, abstract_model, count_params, init_model

TINY = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=48)


def _batch(batch=3, length=10, seed=0):
    ids = np.random.RandomState(seed).randint(0, TINY.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.fast
@pytest.mark.parametrize(
    "head,shape",
    [("token_classification", (3, 10, 5)), ("sequence_classification", (3, 5)), ("causal_lm", (3, 10, 97))],
)
def test_head_output_shapes(head, shape):
    model = init_model(TINY, head, num_labels=None if head == "causal_lm" else 5)
    ids, mask = _batch()
    assert model(ids, attention_mask=mask).shape == shape


@pytest.mark.fast
def test_padding_does_not_change_real_positions():
    model = init_model(TINY, "token_classification", num_labels=4)
    ids, mask = _batch()
    short = model(ids[:, :6], mask[:, :6])
    # Different pad content and more of it: real positions must not see it.
    noisy = ids.at[:, 6:].set(7)
    long = model(noisy, mask)
    np.testing.assert_allclose(np.asarray(short[0]), np.asarray(long[0, :6]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(short[2, :2]), np.asarray(long[2, :2]), atol=1e-5)


@pytest.mark.fast
def test_sequence_head_reads_last_real_token():
    model = init_model(TINY, "sequence_classification", num_labels=3)
    ids, mask = _batch()
    full = model(ids, mask)
    alone = model(ids[2:3, :2], mask[2:3, :2])
    np.testing.assert_allclose(np.asarray(full[2]), np.asarray(alone[0]), atol=1e-5)


@pytest.mark.fast
def test_all_padding_row_is_finite():
    model = init_model(TINY, "token_classification", num_labels=3)
    ids, mask = _batch()
    mask = mask.at[0].set(0)
    assert np.isfinite(np.asarray(model(ids, mask))).all()


@pytest.mark.fast
def test_dropout_only_with_a_key():
    model = init_model(TINY, "token_classification", num_labels=3)
    ids, mask = _batch()
    a, b = model(ids, mask), model(ids, mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    k1 = model(ids, mask, dropout_key=jax.random.key(1))
    k1_again = model(ids, mask, dropout_key=jax.random.key(1))
    k2 = model(ids, mask, dropout_key=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(k1), np.asarray(k1_again))
    assert not np.allclose(np.asarray(k1), np.asarray(a))
    assert not np.allclose(np.asarray(k1), np.asarray(k2))


@pytest.mark.fast
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_at_its_rate_and_keeps_the_expectation(rate):
    x = jnp.full((301, 257), 2.0)
    y = np.asarray(dropout(x, rate, jax.random.key(0)))
    dropped = y == 0
    assert abs(dropped.mean() - rate) < 0.005
    np.testing.assert_allclose(y[~dropped], 2.0 / (1 - rate), rtol=1e-4)
    assert abs(y.mean() - 2.0) < 0.02
    # Each element hashes its own index: neighbours along either axis must not move together.
    for a, b in ((dropped[:, 1:], dropped[:, :-1]), (dropped[1:], dropped[:-1])):
        assert abs((a & b).mean() - rate**2) < 0.005
    other = np.asarray(dropout(x, rate, jax.random.key(1))) == 0
    assert abs((dropped & other).mean() - rate**2) < 0.005
    np.testing.assert_array_equal(np.asarray(dropout(x, rate, None)), np.asarray(x))
    # Under jit, in a bigger array and in bfloat16, the same element gets the same decision.
    same = jax.jit(lambda x: dropout(x, rate, jax.random.key(0)))(x.astype(jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(same) == 0, dropped)


@pytest.mark.fast
def test_dropout_bits_are_threefry_2x32():
    # Random123's known answer for Threefry-2x32-20 (key 0, counter 0), and JAX's own primitive.
    zero = jnp.uint32(0)
    assert [int(w) for w in threefry_2x32((zero, zero), zero, zero)] == [0x6B200159, 0x99BA4EFE]
    key = jax.random.bits(jax.random.key(5), (2,), jnp.uint32)
    x0, x1 = (jax.random.bits(jax.random.key(i), (1000,), jnp.uint32) for i in (6, 7))
    expected = jax.extend.random.threefry2x32_p.bind(key[0], key[1], x0, x1)
    for got, want in zip(jax.jit(threefry_2x32)((key[0], key[1]), x0, x1), expected):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.fast
def test_dropout_counts_past_32_bits():
    low, high = _counters((3, 5))
    np.testing.assert_array_equal(np.asarray(low), np.arange(15).reshape(3, 5))
    np.testing.assert_array_equal(np.asarray(high), 0)
    low, high = jax.eval_shape(lambda: _counters((2**20, 2**13)))  # 2^33 elements: two words
    assert low.shape == high.shape == (2**20, 2**13)
    with pytest.raises(ValueError, match="shape"):
        jax.eval_shape(lambda: _counters((2**32,)))


@pytest.mark.fast
def test_unrolled_layers_give_the_same_outputs_and_gradients():
    ids, mask = _batch()
    config = TINY.replace(n_layer=3)

    def run(unroll):
        model = init_model(config, "token_classification", num_labels=3, unroll=unroll)
        loss = lambda m: jnp.sum(m(ids, mask, dropout_key=jax.random.key(3)) ** 2)  # noqa: E731
        return nnx.value_and_grad(loss)(model)

    (rolled, g_rolled), (unrolled, g_unrolled) = run(1), run(3)
    np.testing.assert_allclose(float(rolled), float(unrolled), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_rolled), jax.tree.leaves(g_unrolled)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unroll=0"):
        config.replace(unroll=0)


@pytest.mark.fast
def test_initialisation_follows_hugging_face():
    config = GPT2Config(n_layer=8, n_embd=256, n_head=4, vocab_size=500, n_positions=64)
    model = init_model(config, "token_classification", num_labels=3)
    h = model.transformer.h
    assert abs(float(jnp.std(h.attn.c_attn.kernel[...])) - 0.02) < 0.002
    scaled = 0.02 / np.sqrt(2 * config.n_layer)
    assert abs(float(jnp.std(h.attn.c_proj.kernel[...])) - scaled) < 0.1 * scaled
    assert abs(float(jnp.std(h.mlp.c_proj.kernel[...])) - scaled) < 0.1 * scaled
    assert float(jnp.abs(h.attn.c_attn.bias[...]).max()) == 0.0
    assert float(jnp.abs(h.ln_1.scale[...] - 1).max()) == 0.0
    # Each stacked block gets its own draw.
    assert not np.allclose(np.asarray(h.attn.c_attn.kernel[0]), np.asarray(h.attn.c_attn.kernel[1]))


@pytest.mark.fast
def test_bfloat16_compute_keeps_float32_parameters():
    model = init_model(TINY, "token_classification", num_labels=3, dtype="bfloat16")
    params = nnx.state(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    ids, mask = _batch()
    f32 = init_model(TINY, "token_classification", num_labels=3)
    np.testing.assert_allclose(np.asarray(model(ids, mask)), np.asarray(f32(ids, mask)), atol=0.05)


@pytest.mark.fast
def test_remat_gives_the_same_gradients():
    ids, mask = _batch()

    def grads(remat):
        model = init_model(TINY, "token_classification", num_labels=3, remat=remat)
        return nnx.grad(lambda m: jnp.sum(m(ids, mask) ** 2))(model)

    for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_parameter_counts_match_transformers(size):
    import torch

    ours = abstract_model(size)  # ShapeDtypeStructs only: no weights allocated
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    hf_config = transformers.GPT2Config(**SIZES[size])
    with torch.device("meta"):
        reference = transformers.GPT2Model(hf_config)
    assert count_params(ours, backbone_only=True) == sum(p.numel() for p in reference.parameters())
    if size == "gpt2":
        assert count_params(ours, backbone_only=True) == 124_439_808


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation_function"):
        GPT2Config(activation_function="mish")
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        GPT2Config.named("gpt3")
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        GPT2Config.from_hf_dict({"model_type": "bert"}, source="x/config.json")
    with pytest.raises(ValueError, match="needs num_labels"):
        init_model(TINY, "token_classification")
    with pytest.raises(ValueError, match="exceeds n_positions"):
        init_model(TINY)(jnp.zeros((1, 49), jnp.int32))


def test_named_sizes_and_hub_ids():
    assert GPT2Config.named("openai-community/gpt2-xl").n_layer == 48
    assert GPT2Config.named("distilgpt2").n_layer == 6
