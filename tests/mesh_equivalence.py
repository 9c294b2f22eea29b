"""Run as a script with 8 (fake CPU) devices: trains a tiny model 20 steps under several mesh
layouts and prints, as JSON, the losses, final parameters and bytes per device of each, and the
axes every parameter of a LoRA model (each head) declares with the spec it gets there.
tests/test_sharding.py compares the layouts; a script because the device count must be set
before jax is imported."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from gptjax import sharding  # noqa: E402
from gptjax.config import base_config  # noqa: E402
from gptjax.lora import add_lora  # noqa: E402
from gptjax.model import HEADS, GPT2Config, init_model  # noqa: E402
from gptjax.steps import build_steps  # noqa: E402

LAYOUTS = {
    "single": dict(data=1, fsdp=1, tensor=1),
    "data8": dict(data=8, fsdp=1, tensor=1),
    "fsdp8": dict(data=1, fsdp=8, tensor=1),
    "tensor2_data4": dict(data=4, fsdp=1, tensor=2),
    "fsdp4_tensor2": dict(data=1, fsdp=4, tensor=2),
}
CONFIG = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=96, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def batches(steps=20, rows=16, length=24):
    rng = np.random.RandomState(0)
    for _ in range(steps):
        mask = (np.arange(length)[None] < rng.randint(4, length + 1, (rows, 1))).astype(np.int32)
        labels = np.where(mask == 1, rng.randint(0, 5, (rows, length)), -100).astype(np.int32)
        yield {"input_ids": rng.randint(0, 96, (rows, length)).astype(np.int32), "attention_mask": mask, "labels": labels}


def bytes_per_device(tree):
    per_device = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    return max(per_device.values())


def run(layout):
    devices = jax.devices()[:1] if layout == "single" else jax.devices()
    mesh = sharding.make_mesh(LAYOUTS[layout], devices)
    config = base_config()
    config.train.learning_rate, config.train.warmup_steps, config.train.batch_size = 1e-3, 2, 16
    steps = build_steps(config, init_model(CONFIG, "token_classification", num_labels=5, seed=0), mesh, total_steps=20)
    state = steps.state
    moments = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
               if isinstance(s, optax.ScaleByAdamState)]
    specs = lambda tree: [x.sharding.spec for x in jax.tree.leaves(tree)]  # noqa: E731
    moments_like_params = bool(moments) and all(specs(m) == specs(state.params) for s in moments for m in (s.mu, s.nu))
    sizes = {"params": bytes_per_device(state.params), "opt_state": bytes_per_device(state.opt_state),
             "c_fc_kernel_shard": list(state.params["transformer"]["h"]["mlp"]["c_fc"]["kernel"][...].addressable_shards[0].data.shape)}
    losses = []
    for batch in batches():
        losses.append(steps.train(sharding.put_batch(batch, mesh))["loss"])
    state = steps.state
    params = {jax.tree_util.keystr(p): np.asarray(v).tolist() for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}
    return {"losses": [float(l) for l in losses], "params": params, "bytes": sizes,
            "moments_like_params": moments_like_params, "declared": declared(mesh)}


def declared(mesh):
    """Per parameter of a LoRA model with each head: its shape, the logical axes it declares and its spec on `mesh`."""
    out = {}
    for head in HEADS:
        model = nnx.eval_shape(lambda: add_lora(init_model(CONFIG, head, num_labels=None if head == "causal_lm" else 5), rank=4))
        params = nnx.state(model, nnx.Param)
        shardings = dict(nnx.to_flat_state(sharding.shardings_for(params, mesh)))
        for path, variable in nnx.to_flat_state(params):
            axes = sharding.logical_axes(variable)
            out["/".join(map(str, path))] = {"shape": list(variable.shape), "axes": list(axes) if axes else None,
                                             "spec": list(shardings[path].get_value().spec)}
    return out


if __name__ == "__main__":
    print(json.dumps({layout: run(layout) for layout in sys.argv[1:] or LAYOUTS}))
