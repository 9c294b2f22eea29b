"""The train and predict steps, built in one place from a config, a model and a mesh.

build_steps is what training, evaluation, prediction, benchmark mode, the memory plan, the
benchmarks and the tests use, so LoRA and freezing (gptjax/partition.py) apply the same everywhere.
The state is plain pytrees (parameters as an nnx.State, Optax's state, the step), so one
jax.jit-compiled function updates it with its buffers donated, and the same pytrees are what
checkpoints hold. The model's graph (its structure, no arrays) is closed over.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gptjax import sharding
from gptjax.config import config_from_json
from gptjax.data.labels import IGNORE_INDEX
from gptjax.errors import ConfigError
from gptjax.partition import FULL, Partition, config_partition


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # nnx.State of the model's parameters (float32)
    opt_state: Any


# ---------------------------------------------------------------------------------------------
# The optimizer


def learning_rate_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then train.schedule: "linear" decays to 0 at the last step,
    "cosine" follows half a cosine down to 0 there, "constant" holds the peak (transformers'
    linear, cosine and constant_with_warmup)."""
    warmup = int(train_cfg.warmup_ratio * total_steps) if train_cfg.warmup_steps is None else train_cfg.warmup_steps
    warmup = min(warmup, total_steps)
    peak, decay_steps = train_cfg.learning_rate, max(total_steps - warmup, 1)
    after = {
        "linear": lambda: optax.linear_schedule(peak, 0.0, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps, alpha=0.0),
        "constant": lambda: optax.constant_schedule(peak),
    }[train_cfg.schedule]()
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), after], [warmup])


def schedule_length(train_cfg, steps_per_epoch: int) -> int:
    """Optimizer steps in the whole run: its epochs, capped by train.max_steps."""
    total = steps_per_epoch * train_cfg.num_epochs
    return total if train_cfg.max_steps is None else min(total, train_cfg.max_steps)


# The keys that shape the optimizer's updates. A resume may change them, as a new config does in
# MaxText (lowering the lr after a loss spike is a resume's common reason), but never silently:
# schedule_changes names each change and the lr it leads to.
OPTIMIZER_KEYS = ("schedule", "learning_rate", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
                  "adam_b1", "adam_b2", "adam_eps")


def schedule_changes(saved_config: dict, config, steps_per_epoch: int, step: int) -> list[str]:
    """Warning lines for a resume at `step` whose optimizer or schedule length differs from the
    checkpoint's run (saved_config: its config_json); none when nothing changed."""
    before, now = config_from_json(saved_config, "the checkpoint").train, config.train
    old_total, new_total = schedule_length(before, steps_per_epoch), schedule_length(now, steps_per_epoch)
    old_lr = float(learning_rate_schedule(before, old_total)(step))
    new_lr = float(learning_rate_schedule(now, new_total)(step))
    lr = f"the learning rate at step {step + 1} becomes {new_lr:.3g} (was {old_lr:.3g})"
    lines = []
    changed = [f"train.{key} {before[key]!r} -> {now[key]!r}" for key in OPTIMIZER_KEYS if before[key] != now[key]]
    if changed:
        lines.append(f"resuming with a changed optimizer ({', '.join(changed)}): {lr}")
    if old_total != new_total:
        lines.append(f"the schedule's length changed from {old_total} to {new_total} steps "
                     f"(train.num_epochs, train.max_steps): {lr}")
    return lines


def decay_mask(params):
    """Weight decay on matrices only: kernels, embeddings and LoRA adapters, not biases or LayerNorm
    scales.

    Decided by name rather than rank, since stacked blocks give biases and scales a layer axis.
    """
    def is_matrix(path, _):
        names = {str(getattr(k, "key", getattr(k, "name", ""))) for k in path}
        return bool(names & {"kernel", "embedding", "lora_a", "lora_b"})

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm as one multiply by the scalar min(1, max_norm / norm), as PyTorch's
    clip_grad_norm_ does. Optax selects between each gradient and its quotient by the norm; XLA
    writes that quotient out (a divide is too dear to repeat in each consumer), and the moments'
    updates then read both arrays: 14 passes over each parameter's arrays where a scalar
    multiply, fused into the moments' updates, leaves 10. Same state (none), so checkpoints are
    unchanged."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / norm)  # a zero norm gives inf, so 1; a NaN stays NaN
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(train_cfg, total_steps)
    # 0 turns clipping off, as in transformers' Trainer; identity keeps the state's structure, so
    # a checkpoint resumes either way.
    clip = clip_by_global_norm(train_cfg.max_grad_norm) if train_cfg.max_grad_norm else optax.identity()
    tx = optax.chain(
        clip,
        optax.adamw(
            schedule, b1=train_cfg.adam_b1, b2=train_cfg.adam_b2, eps=train_cfg.adam_eps,
            weight_decay=train_cfg.weight_decay, mask=decay_mask,
        ),
    )
    return tx, schedule


# ---------------------------------------------------------------------------------------------
# The steps


def token_nll(logits, labels):
    """(the cross-entropy at each labelled position, 0 elsewhere; the labelled positions): -100
    labels count in neither. Same shape as labels ([B, T], or [B] for a sequence task)."""
    valid = labels != IGNORE_INDEX
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.where(valid, losses, 0.0), valid


def masked_cross_entropy(logits, labels):
    """(sum of the cross-entropy over labelled positions, their count); -100 counts in neither.
    Every task's loss: a causal LM's labels are already the next tokens (gptjax/data/encode.py)."""
    losses, valid = token_nll(logits, labels)
    return jnp.sum(losses), jnp.sum(valid)


def make_train_step(graphdef, tx, *, seed: int, grad_accum_steps: int = 1, partition: Partition = FULL,
                    state_sharding=None):
    """train_step(state, batch, frozen=None) -> (state, metrics); the batch is split into
    grad_accum_steps micro-batches whose gradients are summed before the single optimizer update.

    state.params holds what trains; `frozen` the rest (partition.split's halves, gptjax/partition.py).
    The frozen parameters are an input, not a closed-over constant, so XLA neither embeds nor
    copies them, and they get no gradient. `state_sharding` (the state's own shardings) pins the
    new state where the old one was, so that it stays sharded and the step compiles once."""
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch, frozen=None):
        # Rows i, i+A, i+2A, ... form micro-batch i: the split stays local to each device's rows.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, grad_accum_steps, *x.shape[1:]), 0, 1), batch)
        step_key = jax.random.fold_in(base_key, state.step)
        # The loss is the masked mean over the whole batch, however it is split: each micro-batch's
        # sum is divided by the batch's count inside the loss, so the gradients arrive as the mean
        # with no pass of their own over the parameters.
        denominator = jnp.maximum(jnp.sum(batch["labels"] != IGNORE_INDEX), 1).astype(jnp.float32)

        def accumulate(carry, inputs):
            grads, loss = carry
            index, mb = inputs

            def loss_fn(params):
                model = nnx.merge(graphdef, partition.merge(params, frozen))
                logits = model(mb["input_ids"], mb["attention_mask"], dropout_key=jax.random.fold_in(step_key, index),
                               frozen_layers=partition.frozen_layers)
                return masked_cross_entropy(logits, mb["labels"])[0] / denominator

            mb_loss, mb_grads = jax.value_and_grad(loss_fn)(state.params)
            return (jax.tree.map(jnp.add, grads, mb_grads), loss + mb_loss), None

        init = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32))
        (grads, loss), _ = jax.lax.scan(accumulate, init, (jnp.arange(grad_accum_steps), micro))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    out_shardings = None if state_sharding is None else (state_sharding, None)
    return jax.jit(train_step, donate_argnums=(0,), out_shardings=out_shardings)


def make_predict_step(graphdef, partition: Partition = FULL, *, probabilities: bool = False):
    """predict(params, batch, frozen=None) -> the argmax class ids, [B, T] or [B] (with
    `probabilities`, also the softmax over classes in float32). With a partition, params and
    frozen are its two halves."""

    def predict(params, batch, frozen=None):
        logits = nnx.merge(graphdef, partition.merge(params, frozen))(batch["input_ids"], batch["attention_mask"],
                                                                       frozen_layers=partition.frozen_layers)
        ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (ids, jax.nn.softmax(logits.astype(jnp.float32), axis=-1)) if probabilities else ids

    return jax.jit(predict)


def make_nll_step(graphdef, partition: Partition = FULL):
    """nll(params, batch, frozen=None) -> (NLL summed over each row's labelled positions [B]
    float32, their number [B] int32): what a causal LM's loss and perplexity are computed from,
    each row kept apart so the evaluator counts every row once and skips padding rows."""

    def nll(params, batch, frozen=None):
        logits = nnx.merge(graphdef, partition.merge(params, frozen))(batch["input_ids"], batch["attention_mask"],
                                                                       frozen_layers=partition.frozen_layers)
        losses, valid = token_nll(logits, batch["labels"])
        return jnp.sum(losses, axis=-1), jnp.sum(valid, axis=-1, dtype=jnp.int32)

    return jax.jit(nll)


def is_abstract(tree) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def place(tree, shardings):
    """A pytree onto its shardings. Abstract leaves (jax.ShapeDtypeStruct: a plan's, for devices
    that may be compile-only, gptjax/bench/plan.py) carry the sharding instead of moving, so the
    steps below are built the same way for a real run and for its plan."""
    if not is_abstract(tree):
        return jax.device_put(tree, shardings)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def place_params(model, mesh):
    """(graphdef, parameters on the mesh): the model split into structure and arrays, each array
    sharded by its logical axes (sharding.RULES)."""
    graphdef, params = nnx.split(model)
    return graphdef, place(params, sharding.shardings_for(params, mesh))


def init_train_state(model, tx, mesh, partition: Partition = FULL) -> tuple[Any, TrainState, Any]:
    """(graphdef, state, frozen) on the mesh: the state holds the trainable parameters (all of
    them by default) and an optimizer state for them alone; `frozen` the rest. Every leaf is
    committed to its sharding, as the step's outputs will be, so the second call does not
    compile the step again. An abstract model (model.abstract_model) gives an abstract state."""
    graphdef, params = place_params(model, mesh)
    trainable, frozen = partition.split(params)
    make = lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))  # noqa: E731
    shardings = sharding.shardings_for(jax.eval_shape(make, trainable), mesh)
    if is_abstract(trainable):
        state = place(jax.eval_shape(make, trainable), shardings)
    else:
        # Built inside jit straight into its shardings: the optimizer state is never whole on one device.
        state = jax.jit(make, out_shardings=shardings)(trainable)
    return graphdef, state, place(frozen, sharding.shardings_for(frozen, mesh))


def init_state(model, tx, mesh) -> tuple[Any, TrainState]:
    """(graphdef, state) for full fine-tuning: init_train_state without a frozen part."""
    graphdef, state, _ = init_train_state(model, tx, mesh)
    return graphdef, state


# ---------------------------------------------------------------------------------------------
# All of it from a config


@dataclasses.dataclass
class Steps:
    """A model placed on a mesh with its jitted steps. For training (`state` set) the state holds
    what trains and its optimizer state; for inference only the parameters, no optimizer state."""

    graphdef: Any
    partition: Partition
    mesh: Any
    frozen: Any  # the parameters that do not train (partition.split's second half)
    predict_step: Any
    nll_step: Any  # make_nll_step's; jit compiles it only if it is called
    state: TrainState | None = None
    train_step: Any = None
    schedule: optax.Schedule | None = None
    trainable: Any = None  # inference only: partition.split's first half

    @property
    def params(self):
        """What trains (all the parameters unless something is frozen)."""
        return self.state.params if self.state is not None else self.trainable

    def train(self, batch):
        """One optimizer step on a batch already on the mesh; returns the step's metrics."""
        with jax.set_mesh(self.mesh):
            self.state, metrics = self.train_step(self.state, batch, self.frozen)
        return metrics

    def predict(self, batch, params=None):
        """Argmax class ids of a batch on the mesh (a classification task's evaluation)."""
        with jax.set_mesh(self.mesh):
            return self.predict_step(self.params if params is None else params, batch, self.frozen)

    def nll(self, batch, params=None):
        """Per-row NLL sums and labelled-token counts of a batch on the mesh (a causal LM's)."""
        with jax.set_mesh(self.mesh):
            return self.nll_step(self.params if params is None else params, batch, self.frozen)

    def whole_params(self, params=None):
        """The whole model's parameters (trainable and frozen merged)."""
        return self.partition.merge(self.params if params is None else params, self.frozen)

    def model(self, params=None):
        return nnx.merge(self.graphdef, self.whole_params(params))


def check_batch_sizes(config, mesh) -> None:
    cfg = config.train
    sharding.check_batch_size(cfg.batch_size, mesh)
    sharding.check_batch_size(cfg.eval_batch_size, mesh, "train.eval_batch_size")
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is not divisible by train.grad_accum_steps={cfg.grad_accum_steps}")


def build_steps(config, model, mesh, total_steps: int | None = None, memory_limit: int | None = None) -> Steps:
    """The model (already shaped by partition.adapt) on the mesh with its steps. With total_steps, a
    train state and step with the config's optimizer and schedule; without, inference only.
    With model.remat unset (None), remat is turned on where the train step would not fit the
    devices' memory (`memory_limit` bytes a device; by default their allocator's limit)."""
    partition = config_partition(config, model)
    if total_steps is None:
        sharding.check_batch_size(config.train.eval_batch_size, mesh, "train.eval_batch_size")
        graphdef, params = place_params(model, mesh)
        trainable, frozen = partition.split(params)
        return inference_steps(graphdef, partition, mesh, trainable, frozen)
    check_batch_sizes(config, mesh)
    tx, schedule = make_optimizer(config.train, total_steps)
    graphdef, state, frozen = init_train_state(model, tx, mesh, partition)

    def step_for(graphdef):
        return make_train_step(graphdef, tx, seed=config.train.seed, grad_accum_steps=config.train.grad_accum_steps,
                               partition=partition, state_sharding=jax.tree.map(lambda x: x.sharding, state))

    train_step = step_for(graphdef)
    if config.model.remat is None and not model.config.remat:
        limit = memory_limit or device_memory(mesh)
        if limit and not step_fits(train_step, state, frozen, config, mesh, limit):
            recompute_blocks(model)
            graphdef = nnx.graphdef(model)  # the state is the same: remat changes only the program
            train_step = step_for(graphdef)
    return Steps(graphdef, partition, mesh, frozen, make_predict_step(graphdef, partition),
                 make_nll_step(graphdef, partition), state=state, train_step=train_step, schedule=schedule)


def device_memory(mesh) -> int | None:
    """Bytes a device's allocator may hand out (a TPU's or GPU's); None where it keeps no limit (a
    CPU) or there is no device behind it (a plan's compile-only devices)."""
    try:
        return (mesh.devices.flat[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - compile-only devices raise rather than answer
        return None


def batch_struct(mesh, rows: int, length: int, per_token: bool) -> dict:
    """A batch's shapes, split over the batch axes as put_batch splits it: what a step is compiled
    for before any data is read."""
    split = sharding.batch_sharding(mesh)
    ids = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=split)
    labels = ids if per_token else jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=split)
    return {"input_ids": ids, "attention_mask": ids, "labels": labels}


def step_fits(train_step, state, frozen, config, mesh, limit: int) -> bool:
    """Whether the train step, compiled for the longest batch, needs at most `limit` bytes a
    device. A TPU's compiler refuses a step over its memory; a GPU's compiles it, and XLA's memory
    analysis says. Compiled ahead, the step is not compiled again when it first runs."""
    from gptjax import tasks

    batch = batch_struct(mesh, config.train.batch_size, config.data.max_length, tasks.get(config.task).per_token)
    with jax.set_mesh(mesh):
        try:
            compiled = train_step.lower(state, batch, frozen).compile()
        except Exception as e:  # noqa: BLE001 - XlaRuntimeError moved between jax releases
            if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
                return False
            raise
    return memory_total(compiled.memory_analysis()) <= limit


def memory_total(analysis) -> int:
    """Bytes a device holds while a compiled program runs, from XLA's memory analysis: its
    arguments, outputs and temporaries, less the donated arguments its outputs reuse, and its
    code where the device keeps it (a TPU)."""
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes + analysis.generated_code_size_in_bytes)


def recompute_blocks(model) -> None:
    """Turns remat on in a built model: only the layer loop reads it (model.Transformer)."""
    model.transformer.config = model.transformer.config.replace(remat=True)
    model.config = model.config.replace(remat=True)
    logging.getLogger("gptjax").info("model.remat: on, since the train step does not fit the devices' memory "
                                     "without it (set --config.model.remat=false to keep it off)")


def inference_steps(graphdef, partition, mesh, trainable, frozen) -> Steps:
    """Parameters already on the mesh with the predict step evaluation and prediction share."""
    return Steps(graphdef, partition, mesh, frozen, make_predict_step(graphdef, partition),
                 make_nll_step(graphdef, partition), trainable=trainable)
