"""Meshes: data, FSDP and tensor parallelism train like one device; several processes like one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptjax.reporting import read_metrics

from gptjax.errors import ConfigError
from gptjax.sharding import mesh_shape

ROOT = Path(__file__).resolve().parent.parent


def test_mesh_shape_fills_one_axis():
    assert mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert mesh_shape({"data": -1, "fsdp": 1, "tensor": 2}, 8) == (4, 1, 2)
    assert mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
    with pytest.raises(ConfigError, match="only one axis may be -1"):
        mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ConfigError, match="needs 6 devices, there are 8"):
        mesh_shape({"data": 3, "fsdp": 1, "tensor": 2}, 8)
    with pytest.raises(ConfigError, match="do not divide"):
        mesh_shape({"data": -1, "tensor": 3}, 8)


@pytest.fixture(scope="module")
def layouts():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "mesh_equivalence.py")], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("layout", ["data8", "fsdp8", "tensor2_data4", "fsdp4_tensor2"])
def test_layout_trains_like_one_device(layouts, layout):
    single, other = layouts["single"], layouts[layout]
    np.testing.assert_allclose(other["losses"], single["losses"], rtol=1e-5)
    assert single["params"].keys() == other["params"].keys()
    for name in single["params"]:
        np.testing.assert_allclose(np.array(other["params"][name]), np.array(single["params"][name]), atol=1e-5, err_msg=name)


def test_parameters_and_optimizer_state_are_really_sharded(layouts):
    whole = layouts["single"]["bytes"]
    assert layouts["data8"]["bytes"]["params"] == whole["params"]  # data parallel: replicated
    for layout, at_most in [("fsdp8", 1 / 8 + 0.02), ("fsdp4_tensor2", 1 / 8 + 0.02), ("tensor2_data4", 0.55)]:
        sizes = layouts[layout]["bytes"]
        # LayerNorms, biases along a replicated axis and the small head stay whole; the rest splits.
        assert sizes["params"] <= at_most * whole["params"], layout
        assert sizes["opt_state"] <= at_most * whole["opt_state"], layout
    assert layouts["fsdp8"]["bytes"]["c_fc_kernel_shard"] == [2, 64 // 8, 256]  # [layers, embed / fsdp, mlp]
    assert layouts["tensor2_data4"]["bytes"]["c_fc_kernel_shard"] == [2, 64, 256 // 2]  # mlp / tensor
    assert layouts["fsdp4_tensor2"]["bytes"]["c_fc_kernel_shard"] == [2, 64 // 4, 256 // 2]


def test_optimizer_state_is_sharded_as_its_parameters(layouts):
    assert all(layouts[layout]["moments_like_params"] for layout in layouts)


@pytest.mark.parametrize("layout", ["single", "fsdp4_tensor2"])  # 1 device; 8 devices over all three axes
def test_every_parameter_declares_its_axes(layouts, layout):
    """A LoRA model with each head: no matrix may fall back to replicated for want of axes."""
    declared = layouts[layout]["declared"]
    missing = [path for path, p in declared.items() if len(p["shape"]) >= 2 and not p["axes"]]
    assert not missing, f"parameters with no logical axes (model.py, lora.py: declare them): {missing}"
    assert all(len(p["axes"]) == len(p["shape"]) for p in declared.values() if p["axes"])


# What every parameter got from the table of parameter paths the declared axes replaced (mesh_equivalence's
# model with LoRA, every head): the layouts it is split on; replicated on the others. Training and
# checkpoints depend on these.
PINNED_SPECS = {
    "classifier/kernel": {"fsdp8": ["fsdp"], "fsdp4_tensor2": ["fsdp"]},
    "score/kernel": {"fsdp8": ["fsdp"], "fsdp4_tensor2": ["fsdp"]},
    "transformer/h/attn/c_attn/bias": {"tensor2_data4": [None, "tensor"], "fsdp4_tensor2": [None, "tensor"]},
    "transformer/h/attn/c_attn/kernel": {"fsdp8": [None, "fsdp"], "tensor2_data4": [None, None, "tensor"],
                                         "fsdp4_tensor2": [None, "fsdp", "tensor"]},
    "transformer/h/attn/c_proj/bias": {"fsdp8": [None, "fsdp"], "fsdp4_tensor2": [None, "fsdp"]},
    "transformer/h/attn/c_proj/kernel": {"fsdp8": [None, None, "fsdp"], "tensor2_data4": [None, "tensor"],
                                         "fsdp4_tensor2": [None, "tensor", "fsdp"]},
    "transformer/h/mlp/c_fc/bias": {"tensor2_data4": [None, "tensor"], "fsdp4_tensor2": [None, "tensor"]},
    "transformer/h/mlp/c_fc/kernel": {"fsdp8": [None, "fsdp"], "tensor2_data4": [None, None, "tensor"],
                                      "fsdp4_tensor2": [None, "fsdp", "tensor"]},
    "transformer/h/mlp/c_proj/bias": {"fsdp8": [None, "fsdp"], "fsdp4_tensor2": [None, "fsdp"]},
    "transformer/h/mlp/c_proj/kernel": {"fsdp8": [None, None, "fsdp"], "tensor2_data4": [None, "tensor"],
                                        "fsdp4_tensor2": [None, "tensor", "fsdp"]},
    "transformer/wpe/embedding": {"fsdp8": [None, "fsdp"], "fsdp4_tensor2": [None, "fsdp"]},
    "transformer/wte/embedding": {"fsdp8": [None, "fsdp"], "tensor2_data4": ["tensor"], "fsdp4_tensor2": ["tensor", "fsdp"]},
}
REPLICATED = ["classifier/bias", *(f"transformer/{p}/{leaf}" for p in ("h/ln_1", "h/ln_2", "ln_f") for leaf in ("bias", "scale")),
              *(f"transformer/h/{t}/lora_{ab}" for t in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj") for ab in "ab")]


@pytest.mark.parametrize("layout", ["single", "data8", "fsdp8", "tensor2_data4", "fsdp4_tensor2"])
def test_parameter_specs_are_pinned(layouts, layout):
    got = {path: p["spec"] for path, p in layouts[layout]["declared"].items()}
    assert got.keys() == PINNED_SPECS.keys() | set(REPLICATED)
    for path, spec in got.items():
        assert spec == PINNED_SPECS.get(path, {}).get(layout, []), path


TINY = [
    "--config=demo", "--config.model.arch.n_layer=1", "--config.model.arch.n_embd=32", "--config.model.arch.n_head=2",
    "--config.tokenizer.vocab_size=300", "--config.data.synthetic_sizes=(200, 20, 20)", "--config.train.batch_size=16",
    "--config.train.eval_batch_size=16", "--config.train.max_steps=8", "--config.train.log_every=1",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_params(workdir):
    from test_checkpoint import final_state

    return final_state(workdir)[1]


def _losses(workdir):
    lines = read_metrics(Path(workdir) / "metrics.jsonl")
    return [l["loss"] for l in lines if l["split"] == "train"]


def test_two_processes_train_like_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = subprocess.run([sys.executable, "run.py", *TINY, f"--workdir={tmp_path / 'one'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr

    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen([sys.executable, "run.py", *TINY, f"--workdir={tmp_path / 'two'}", f"--coordinator_address={address}",
                          "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 devices" in outs[0]

    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    one_params, two_params = _final_params(tmp_path / "one"), _final_params(tmp_path / "two")
    for name in one_params:
        np.testing.assert_allclose(two_params[name], one_params[name], atol=1e-5, err_msg=name)
    assert (tmp_path / "two" / "results.json").exists()
