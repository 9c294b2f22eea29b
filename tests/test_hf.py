"""Hugging Face checkpoints: parity with transformers' PyTorch GPT-2, export, the hub path, errors.

The parity tests (marked fast) compare with references that tests/torch_reference.py computes with
torch, or reads back where torch is not installed; the other tests need torch themselves.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

import gptjax
import torch_reference
from gptjax.hf import to_hf_state_dict
from gptjax.errors import CheckpointError
from torch_reference import HF_CLASSES, padded_batch, save_reference, torch_logits

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    cache = tmp_path_factory.mktemp("torch_reference")
    return lambda name: torch_reference.load(name, cache)


def real_positions(logits, mask):
    return logits[mask.astype(bool)] if logits.ndim == 3 else logits


def jax_inputs(ref):
    return jnp.asarray(ref["ids"], jnp.int32), jnp.asarray(ref["mask"], jnp.int32)


@pytest.mark.fast
@pytest.mark.parametrize("head", sorted(HF_CLASSES))
def test_logits_match_pytorch(head, reference):
    directory, ref = reference(f"logits-{head}")
    model = gptjax.from_pretrained(str(directory), head=head)
    got = np.asarray(model(*jax_inputs(ref)))
    expected, mask = ref["logits"], ref["mask"]
    assert got.shape == expected.shape
    assert np.abs(real_positions(got, mask) - real_positions(expected, mask)).max() <= 1e-4


@pytest.mark.fast
@pytest.mark.parametrize("head", sorted(HF_CLASSES))
def test_gradients_match_pytorch(head, reference):
    directory, ref = reference(f"gradients-{head}")
    model = gptjax.from_pretrained(str(directory), head=head)
    ids, mask = jax_inputs(ref)
    expected = {k.removeprefix("grad:"): v for k, v in ref.items() if k.startswith("grad:")}

    def jax_loss(m):
        return jnp.sum(m(ids, mask) * ref["probe"] * ref["weights"])

    grads = nnx.grad(jax_loss)(model)
    graphdef = nnx.graphdef(model)
    got = {k.removeprefix("transformer."): v for k, v in to_hf_state_dict(nnx.merge(graphdef, grads)).items()}
    assert sorted(got) == sorted(expected)  # lm_head.weight is tied: its gradient is folded into wte's
    for name in expected:
        scale = max(1.0, np.abs(expected[name]).max())
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4 * scale, err_msg=name)


@pytest.mark.parametrize("head", sorted(HF_CLASSES))
def test_export_round_trip(head, tmp_path):
    import torch

    labels = LABELS if head != "causal_lm" else None
    config = gptjax.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=40, eos_token_id=100, bos_token_id=100)
    model = gptjax.init_model(config, head, labels=labels, seed=3)
    gptjax.save_pretrained(model, tmp_path)
    loaded, info = getattr(transformers, HF_CLASSES[head]).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    if labels:
        assert [loaded.config.id2label[i] for i in range(len(labels))] == labels
    ids, mask = padded_batch(seed=4)
    ids = np.where(mask == 1, ids, config.eos_token_id)  # gptjax pads with EOS; transformers uses the mask
    with torch.no_grad():
        expected = torch_logits(loaded.eval(), ids, mask).numpy()
    got = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    assert np.abs(real_positions(got, mask) - real_positions(expected, mask)).max() <= 1e-4
    # And back into gptjax: same parameters, same label names.
    again = gptjax.from_pretrained(str(tmp_path), head=head)
    assert again.labels == (tuple(labels) if labels else None)
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_head_is_initialised_and_logged(tmp_path, caplog):
    save_reference("causal_lm", tmp_path)
    with caplog.at_level("INFO", logger="gptjax"):
        model = gptjax.from_pretrained(str(tmp_path), head="token_classification", num_labels=3)
    assert model.classifier.kernel.shape == (32, 3)
    assert "initialising a new classifier head" in caplog.text
    # The backbone still matches the stored one.
    stored = load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(np.asarray(model.transformer.wte.embedding[...]), stored["transformer.wte.weight"])


def test_stored_head_and_its_labels_are_loaded(tmp_path):
    save_reference("token_classification", tmp_path, id2label=dict(enumerate(LABELS)))
    model = gptjax.from_pretrained(str(tmp_path), head="token_classification")
    assert model.num_labels == 5 and model.labels == tuple(LABELS)
    with pytest.raises(CheckpointError, match="stored classifier head has 5 labels but 3 were requested"):
        gptjax.from_pretrained(str(tmp_path), head="token_classification", num_labels=3)
    fresh = gptjax.from_pretrained(str(tmp_path), head="token_classification", num_labels=3, reinit_head=True)
    assert fresh.classifier.kernel.shape == (32, 3)


@pytest.mark.fast
def test_gpt2model_checkpoint_without_prefix(reference):
    directory, ref = reference("gpt2model")
    model = gptjax.from_pretrained(str(directory), head="causal_lm")
    got = np.asarray(model(*jax_inputs(ref)))
    mask = ref["mask"]
    assert np.abs(real_positions(got, mask) - real_positions(ref["logits"], mask)).max() <= 1e-4


def _hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Lays `source` out as huggingface_hub's cache holds a downloaded repo."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / f"blob-{name}"
        shutil.copy(source / name, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def test_hub_id_offline_from_the_cache(tmp_path):
    save_reference("token_classification", tmp_path / "src", id2label=dict(enumerate(LABELS)))
    _hub_cache(tmp_path / "cache", "tiny-org/tiny-gpt2", tmp_path / "src")
    script = (
        "import gptjax\n"
        "m = gptjax.from_pretrained('tiny-org/tiny-gpt2', head='token_classification')\n"
        "print(m.labels)\n"
        "try:\n"
        "    gptjax.from_pretrained('tiny-org/not-cached')\n"
        "except gptjax.CheckpointError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert str(tuple(LABELS)) in out.stdout
    assert "ERROR tiny-org/not-cached: could not fetch it from the Hugging Face Hub" in out.stdout


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        gptjax.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="no config.json"):
        gptjax.from_pretrained(str(tmp_path))
    save_reference("causal_lm", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        gptjax.from_pretrained(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*pickle.*save_pretrained"):
        gptjax.from_pretrained(str(tmp_path))


def test_wrong_model_type(tmp_path):
    save_reference("causal_lm", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json: model_type is 'llama'"):
        gptjax.from_pretrained(str(tmp_path))


def test_shapes_that_disagree_with_the_config(tmp_path):
    save_reference("causal_lm", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_positions": 64}))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor wpe.weight has shape \(40, 32\).*\(64, 32\)"):
        gptjax.from_pretrained(str(tmp_path))


def test_missing_and_unexpected_tensors(tmp_path):
    save_reference("causal_lm", tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    partial = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks h.1.mlp.c_fc.bias"):
        gptjax.from_pretrained(str(tmp_path))
    save_file({**tensors, "transformer.h.0.attn.q_proj.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not have.*h.0.attn.q_proj.weight"):
        gptjax.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_honour_the_umask_like_the_config(umask, tmp_path):
    model = gptjax.init_model(gptjax.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8),
                              "causal_lm", seed=0)
    before = os.umask(umask)
    try:
        gptjax.save_pretrained(model, tmp_path)
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}
