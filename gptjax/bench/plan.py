"""How many bytes a fine-tuning run needs on each device, before running it.

    python -m gptjax.bench memory --size gpt2-xl --batch 16 --length 512 --mesh data=1,fsdp=8,tensor=1 \
        --dtype bfloat16 [--remat] [--check]

Parameters, gradients, AdamW's two moments and its update are float32 and split as sharding.RULES splits
them; computed from abstract shapes, nothing allocated. Activations kept for the backward pass
follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
eq. 2): per block s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes at 16 bits, scaled to the compute dtype,
with b the rows per device, t the tensor axis, a the heads; with --remat only each block's input
(2*s*b*h at 16 bits) is kept, plus one block's worth while it is recomputed. --check compiles the
real train step on this machine's CPU and prints XLA's own memory analysis beside the plan.
"""

from __future__ import annotations

import math

import jax

from gptjax import sharding
from gptjax.model import GPT2Config, abstract_model

GiB = 2**30


def _shard_factor(spec, mesh_sizes: dict[str, int]) -> int:
    return math.prod(mesh_sizes[a] for axis in spec if axis for a in (axis if isinstance(axis, tuple) else (axis,)))


def plan(config: GPT2Config, *, head: str, num_labels: int | None, batch: int, length: int,
         mesh_sizes: dict[str, int]) -> dict[str, int]:
    """Bytes per device of parameters, gradients, optimizer state and activations."""
    from flax import nnx

    params = nnx.state(abstract_model(config, head, num_labels), nnx.Param)
    specs = jax.tree.leaves(sharding.specs_for(params, mesh_sizes), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    param_bytes = sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize // _shard_factor(spec, mesh_sizes)
        for leaf, spec in zip(jax.tree.leaves(params), specs)
    )
    rows = batch // (mesh_sizes["data"] * mesh_sizes["fsdp"])
    s, h, a, t, n = length, config.n_embd, config.n_head, mesh_sizes["tensor"], config.n_layer
    scale = jax.numpy.dtype(config.dtype).itemsize / 2  # the formula counts 16-bit activations
    per_block = s * rows * h * (10 + 24 / t + 5 * a * s / (h * t)) * scale
    if config.remat:
        kept = n * 2 * s * rows * h * scale + per_block
    else:
        kept = n * per_block
    outputs = num_labels if head != "causal_lm" else config.vocab_size
    logits = 2 * s * rows * outputs * 4  # float32 logits and their gradient
    return {
        "params": param_bytes,
        "gradients": param_bytes,
        "optimizer": 2 * param_bytes,  # AdamW's first and second moments
        "update": param_bytes,  # the optimizer's update, live while it is applied
        "activations": int(kept + logits),
    }


def xla_memory(config: GPT2Config, *, head: str, num_labels: int | None, batch: int, length: int) -> dict[str, int]:
    """XLA's memory analysis of the real compiled train step on one local device."""
    import jax.numpy as jnp
    from flax import nnx

    from gptjax.config import base_config
    from gptjax.steps import TrainState, make_optimizer, make_train_step

    # Abstract shapes throughout: build_steps would allocate the model; the step is the same one.
    model = abstract_model(config, head, num_labels)
    graphdef, params = nnx.split(model)
    tx, _ = make_optimizer(base_config().train, 10)
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), params)
    labels_shape = (batch,) if head == "sequence_classification" else (batch, length)
    batch_shapes = {
        "input_ids": jax.ShapeDtypeStruct((batch, length), jnp.int32),
        "attention_mask": jax.ShapeDtypeStruct((batch, length), jnp.int32),
        "labels": jax.ShapeDtypeStruct(labels_shape, jnp.int32),
    }
    compiled = make_train_step(graphdef, tx, seed=0).lower(state, batch_shapes).compile()
    analysis = compiled.memory_analysis()
    return {"arguments": analysis.argument_size_in_bytes, "temporaries": analysis.temp_size_in_bytes,
            "outputs": analysis.output_size_in_bytes}


def parse_mesh(text: str) -> dict[str, int]:
    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        if key not in sizes:
            raise SystemExit(f"--mesh: unknown axis {key!r}; axes are data, fsdp, tensor")
        sizes[key] = int(value)
    return sizes


def add_arguments(parser) -> None:
    parser.add_argument("--size", default="gpt2")
    parser.add_argument("--head", default="token_classification")
    parser.add_argument("--num_labels", type=int, default=9)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--mesh", default="data=1,fsdp=1,tensor=1")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--check", action="store_true", help="also compile the step here and print XLA's analysis")


def memory(args) -> None:
    """`python -m gptjax.bench memory`: prints the plan (and, with --check, XLA's analysis)."""
    mesh_sizes = parse_mesh(args.mesh)
    config = GPT2Config.named(args.size, dtype=args.dtype, remat=args.remat)
    num_labels = None if args.head == "causal_lm" else args.num_labels
    bytes_ = plan(config, head=args.head, num_labels=num_labels, batch=args.batch, length=args.length, mesh_sizes=mesh_sizes)
    total = sum(bytes_.values())
    print(f"{args.size}, {args.head}, batch {args.batch} x {args.length}, {args.dtype}, mesh {mesh_sizes}, "
          f"remat {args.remat}: per device")
    for name, value in bytes_.items():
        print(f"  {name:<12} {value / GiB:8.2f} GiB")
    print(f"  {'total':<12} {total / GiB:8.2f} GiB")
    if args.check:
        if math.prod(mesh_sizes.values()) != 1:
            raise SystemExit("--check compiles on one CPU device: use --mesh data=1,fsdp=1,tensor=1")
        xla = xla_memory(config, head=args.head, num_labels=num_labels, batch=args.batch, length=args.length)
        print(f"XLA (this CPU): arguments {xla['arguments'] / GiB:.2f} GiB (plan: parameters + optimizer "
              f"{(bytes_['params'] + bytes_['optimizer']) / GiB:.2f}), temporaries {xla['temporaries'] / GiB:.2f} GiB "
              f"(plan: gradients + update + activations "
              f"{(bytes_['gradients'] + bytes_['update'] + bytes_['activations']) / GiB:.2f})")

