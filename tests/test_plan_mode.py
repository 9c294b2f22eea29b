"""Plan mode (gptjax/bench/plan.py): the run's programs compiled for a target, and what they need.

The CPU target's tests run everywhere. The TPU and GPU ones need the targets' compilers (pip install
'gptjax[plan]', Python >= 3.12), which CI's newest-JAX tier has; elsewhere they are skipped with
that advice."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from gptjax.bench import plan, records, targets
from gptjax.bench.flops import train_flops
from gptjax.bench.train_step import model_config_of, shapes
from gptjax.config import apply_overrides, load_config, validate

# A model big enough that its matmuls dominate, small enough to compile in seconds on a CPU.
SMALL = {"model.arch.n_layer": "4", "model.arch.n_embd": "256", "model.arch.n_head": "4",
         "model.arch.n_positions": "128", "data.max_length": "128", "train.batch_size": "8",
         "train.eval_batch_size": "8"}


def config(name="demo", **overrides):
    return validate(apply_overrides(load_config(name), {k.replace("__", "."): str(v) for k, v in overrides.items()}))


def small(**overrides):
    return validate(apply_overrides(load_config("demo"), {**SMALL, **{k.replace("__", "."): str(v)
                                                                        for k, v in overrides.items()}}))


def compiler(name):
    target = targets.get(name)
    if (advice := targets.compiler_missing(target)) is not None:
        pytest.skip(advice)
    return target


def program(p, name):
    return next(r for r in p["programs"] if r["program"] == name)


def test_the_plan_for_this_cpu_is_the_real_steps_memory():
    """Planned on abstract shapes, the train step is the one training compiles from real weights."""
    from gptjax import partition, sharding
    from gptjax.model import init_model
    from gptjax.steps import build_steps

    cfg = small()
    planned = program(plan.plan_config(cfg, targets.get("cpu"), count_flops=False), "train")
    s = shapes(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    model = partition.adapt(init_model(model_config_of(cfg), s["head"], s["num_labels"]), cfg)
    steps = build_steps(cfg, model, mesh, total_steps=1_000_000)
    batch = sharding.put_batch({k: jnp.zeros((8, 128), jnp.int32) for k in ("input_ids", "attention_mask", "labels")},
                               mesh)
    with jax.set_mesh(mesh):
        real = steps.train_step.lower(steps.state, batch, steps.frozen).compile().memory_analysis()
    assert planned["memory_bytes"]["temporaries"] == real.temp_size_in_bytes
    assert planned["memory_bytes"]["total"] == (real.argument_size_in_bytes + real.output_size_in_bytes
                                                + real.temp_size_in_bytes - real.alias_size_in_bytes)
    assert planned["fits"] and planned["headroom_bytes"] > 0


def test_flops_of_a_rolled_layer_loop_are_counted_for_every_layer():
    """XLA counts a rolled loop's body once; the plan's count equals the unrolled program's."""
    rolled = program(plan.plan_config(small(model__unroll=1), targets.get("cpu"), programs=("train",)), "train")
    unrolled = program(plan.plan_config(small(model__unroll=4), targets.get("cpu"), programs=("train",)), "train")
    assert rolled["compiled_flops"] == pytest.approx(unrolled["compiled_flops"], rel=1e-4)
    # Besides the matmuls the analytic count holds, XLA counts LayerNorms, GELU, softmax and AdamW.
    assert 1.0 < rolled["compiled_flops"] / rolled["model_flops"] < 1.2


def test_a_train_step_too_large_is_reported_and_the_levers_find_what_fits():
    cpu = targets.get("cpu")
    off = small(model__remat="false")
    whole = program(plan.plan_config(off, cpu, programs=("train",), count_flops=False), "train")
    remat = program(plan.plan_config(small(model__remat="true"), cpu, programs=("train",), count_flops=False), "train")
    total, with_remat = whole["memory_bytes"]["total"], remat["memory_bytes"]["total"]
    assert with_remat < total
    tight = dataclasses.replace(cpu, memory_bytes=(total + with_remat) // 2)
    p = plan.plan_config(off, tight, programs=("train",), count_flops=False)
    assert not p["fits"] and program(p, "train")["headroom_bytes"] < 0
    assert plan.find_fit(off, tight) == {"model.remat": "true"}
    fixed = plan.plan_config(small(model__remat="true"), tight, programs=("train",), count_flops=False)
    assert fixed["fits"]
    # Unset, model.remat is turned on by build_steps itself where the step would not fit otherwise.
    auto = plan.plan_config(small(), tight, programs=("train",), count_flops=False)
    assert auto["fits"] and auto["remat"] is True
    roomy = plan.plan_config(small(), cpu, programs=("train",), count_flops=False)
    assert roomy["remat"] is False


def test_levers_keep_the_global_batch():
    levers = plan.levers(config(train__batch_size=32, model__remat="false"), num_devices=4)
    assert levers[0] == {"model.remat": "true"}
    assert levers[1] == {"model.remat": "true", "mesh.data": "1", "mesh.fsdp": "-1"}
    # 8 rows a device: micro-batches of 4, 2 and 1 rows.
    assert [lever.get("train.grad_accum_steps") for lever in levers[2:]] == ["2", "4", "8"]
    assert all(lever["mesh.fsdp"] == "-1" for lever in levers[2:])
    assert plan.levers(config(train__batch_size=32), num_devices=4)[0] == {"mesh.data": "1", "mesh.fsdp": "-1"}


def test_plan_mode_exits_3_when_something_does_not_fit_and_writes_its_plan(tmp_path, monkeypatch, capsys):
    from gptjax import cli

    cpu = targets.get("cpu")
    tiny = dataclasses.replace(cpu, memory_bytes=1024)
    monkeypatch.setattr(targets, "get", lambda name: tiny)
    results = tmp_path / "records.jsonl"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--config=demo", f"--workdir={tmp_path / 'w'}", "--mode=plan", "--target=cpu",
                  f"--results={results}", "--config.train.batch_size=4"])
    assert exit_.value.code == plan.DOES_NOT_FIT
    out = capsys.readouterr().out
    assert "NO" in out and "nothing tried fits" in out
    saved = json.loads((tmp_path / "w" / "plan.json").read_text())
    assert saved["fits"] is False and saved["suggested_overrides"] is None
    (record,) = records.load_records([str(results)])
    assert record["estimate"] is True and record["fits"] is False
    assert "(plan: estimate)" in records.format_table([record])


def test_target_list_and_an_unknown_target(tmp_path):
    command = [sys.executable, "-m", "gptjax", "--config=demo", f"--workdir={tmp_path}", "--mode=plan"]
    listed = subprocess.run([*command, "--target=list"], capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    for name in ("v5e-8", "v4-8", "v5p-8", "v6e-8", "a100x8", "h100", "h100x16", "h200x8"):
        assert name in listed.stdout
    unknown = subprocess.run([*command, "--target=v9z-8"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 1 and "v5e-8" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "--target" in missing.stderr


@pytest.mark.fast
@pytest.mark.parametrize("name", ["v5e-8", "h100"])
def test_the_demo_fits_a_tpu_and_a_gpu(name):
    target = compiler(name)
    p = plan.plan_config(config("demo"), target)
    assert p["fits"] and p["num_devices"] == target.num_devices
    train = program(p, "train")
    assert train["attention"] == "xla" and train["estimate"]["estimated_tokens_per_sec"] > 0
    assert train["memory_bytes"]["total"] < target.memory_bytes


@pytest.mark.fast
@pytest.mark.parametrize("name", ["v5e-8", "h100"])
def test_gpt2_fits_a_tpu_and_a_gpu_with_flops_as_counted(name):
    target = compiler(name)
    cfg = config("ner", model__dtype="bfloat16")
    p = plan.plan_config(cfg, target, programs=("train",))
    train = program(p, "train")
    assert p["fits"] and train["memory_bytes"]["parameters"] > 100 * 2**20
    analytic = train_flops(model_config_of(cfg), "token_classification", 9, 16, 128)
    assert train["model_flops"] == analytic
    # The compiler's count, every layer included, on all devices, against the matmuls alone.
    ratio = train["compiled_flops"] * target.num_devices / analytic
    assert 1.0 < ratio < 1.1, ratio


@pytest.mark.fast
def test_fsdp_on_a_tpu_slice_gathers_parameters_and_splits_the_state():
    target = compiler("v5e-8")
    data = program(plan.plan_config(config("demo"), target, programs=("train",), count_flops=False), "train")
    fsdp = program(plan.plan_config(config("demo", mesh__data=1, mesh__fsdp=-1), target, programs=("train",),
                                     count_flops=False), "train")
    assert fsdp["collectives"]["all-gather"]["count"] > 0
    assert fsdp["memory_bytes"]["optimizer"] < data["memory_bytes"]["optimizer"] / 4


@pytest.mark.fast
def test_a_causal_lm_plans_its_decoding_program():
    target = compiler("h100")
    p = plan.plan_config(config("lm_demo"), target, count_flops=False)
    assert [r["program"] for r in p["programs"]] == ["train", "eval", "decode"]
    assert program(p, "decode")["fits"] and "estimate" not in program(p, "decode")


def test_training_turns_remat_on_only_where_the_step_would_not_fit():
    """build_steps, as training calls it on a TPU or GPU (whose allocator gives the limit)."""
    import numpy as np

    from gptjax import partition, sharding
    from gptjax.model import init_model
    from gptjax.steps import build_steps

    def built(cfg, limit):
        s = shapes(cfg)
        model = partition.adapt(init_model(model_config_of(cfg), s["head"], s["num_labels"]), cfg)
        mesh = sharding.make_mesh(cfg.mesh)
        steps = build_steps(cfg, model, mesh, total_steps=10, memory_limit=limit)
        rng = np.random.default_rng(0)
        batch = {k: rng.integers(0, 9, (32, 64), dtype=np.int32) for k in ("input_ids", "labels")}
        batch["attention_mask"] = np.ones((32, 64), np.int32)
        return model.config.remat, float(steps.train(sharding.put_batch(batch, mesh))["loss"])

    auto, auto_loss = built(config("demo"), limit=1)
    assert auto is True
    assert built(config("demo", model__remat="true"), limit=None) == (True, pytest.approx(auto_loss, rel=1e-5))
    assert built(config("demo"), limit=2**40)[0] is False
    assert built(config("demo", model__remat="false"), limit=1)[0] is False  # asked for: kept, and the plan says so


@pytest.mark.fast
def test_the_command_starts_no_plugin_on_a_machine_without_an_accelerator(tmp_path):
    """With gptjax[plan] installed (CI's newest-JAX tier), JAX would start the CUDA plugin and
    libtpu, which fail on this machine with pages of tracebacks."""
    import os

    from gptjax.cli import accelerator_attached

    if accelerator_attached():
        pytest.skip("this machine shows an accelerator")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    run = subprocess.run([sys.executable, "-m", "gptjax", "--config=demo", f"--workdir={tmp_path}",
                          "--config.train.max_steps=1", "--config.train.num_epochs=1"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "plugin" not in run.stderr.lower(), run.stderr[:2000]


@pytest.mark.fast
def test_cudnn_attention_without_cudnn_here_says_what_it_needs():
    from gptjax.errors import SetupError

    target = compiler("h100")
    if plan.cudnn_loadable():
        pytest.skip("cuDNN is installed here: the plan compiles cuDNN's attention")
    cfg = config("demo", model__attention="cudnn", model__dtype="bfloat16", model__dropout=0)
    with pytest.raises(SetupError, match="attention=xla"):
        plan.plan_config(cfg, target)


@pytest.mark.parametrize("overrides", [{"train__freeze": "top_k", "train__trainable_blocks": 1}, {"lora__rank": 4}])
def test_freezing_and_lora_plan_a_smaller_optimizer_state(overrides):
    cpu = targets.get("cpu")
    full = program(plan.plan_config(small(), cpu, programs=("train",), count_flops=False), "train")
    part = program(plan.plan_config(small(**overrides), cpu, programs=("train",), count_flops=False), "train")
    assert part["fits"] and part["memory_bytes"]["optimizer"] < full["memory_bytes"]["optimizer"] / 2
