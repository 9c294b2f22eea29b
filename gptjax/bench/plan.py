"""Plan mode: the run's programs compiled for a TPU or GPU that need not be attached, and what
they need there.

    gptjax --config=ner --workdir=/tmp/plan --mode=plan --target=v5e-8
    gptjax --config=ner --workdir=/tmp/plan --mode=plan --target=list

The programs are the ones training builds (steps.build_steps, on an abstract model: no weights,
no data), lowered for the target's devices (bench/targets.py: JAX's compile-only topologies) and
compiled by the target's own compiler (libtpu, the CUDA plugin). Everything that depends on the
hardware (the layer loop's unroll, attention) is decided from the mesh the program is built for
(sharding.platform), so the plan compiles what the target would run. Each program's memory,
FLOPs, collectives and attention kernel are read back from the compiled executable
(bench/compiled.py); a step time is estimated from them (a roofline, labelled as an estimate).
When the train step does not fit, the levers (remat, FSDP, gradient accumulation) are compiled
in turn and the first that fits is printed as --config overrides.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gptjax import sharding
from gptjax.bench import compiled as analysis
from gptjax.bench import records, targets
from gptjax.bench.flops import forward_flops, train_flops
from gptjax.bench.train_step import model_config_of, shapes
from gptjax.errors import ConfigError, SetupError

log = logging.getLogger("gptjax")
GiB = 2**30
DOES_NOT_FIT = 3  # the exit status when a program does not fit (errors exit 1, usage errors 2)


# ---------------------------------------------------------------------------------------------
# Building the programs, abstractly


def abstract_model(config, model_config, head: str, num_labels):
    """The model training builds (LoRA and freezing applied), with no arrays."""
    from flax import nnx

    from gptjax import partition
    from gptjax.model import init_model

    return nnx.eval_shape(lambda: partition.adapt(init_model(model_config, head, num_labels), config))


def lower_steps(config, model_config, mesh, memory_limit: int | None = None) -> dict:
    """{program name: (jax.stages.Lowered, the parameter and optimizer-state structs)} for the
    train and eval steps, built by steps.build_steps as training builds them; and "remat": whether
    the blocks are recomputed (decided there when model.remat is unset)."""
    from gptjax.steps import batch_struct, build_steps

    s = shapes(config)
    model = abstract_model(config, model_config, s["head"], s["num_labels"])
    # The schedule's length does not change the step; the target's memory decides an unset model.remat.
    start = time.perf_counter()
    steps = build_steps(config, model, mesh, total_steps=1_000_000, memory_limit=memory_limit)
    built = time.perf_counter() - start  # with an unset model.remat, the train step compiled here
    train_batch = batch_struct(mesh, s["batch_size"], s["seq_len"], s["per_token"])
    eval_batch = batch_struct(mesh, s["eval_batch_size"], s["seq_len"], s["per_token"])
    evaluate = steps.nll_step if s["head"] == "causal_lm" else steps.predict_step
    params = (steps.state.params, steps.frozen)
    with jax.set_mesh(mesh):
        return {
            "remat": model.config.remat,  # build_steps turns an unset model.remat on where it must
            "build_s": built,
            "train": (steps.train_step.lower(steps.state, train_batch, steps.frozen),
                      {"parameters": params, "optimizer": steps.state.opt_state}),
            "eval": (evaluate.lower(steps.state.params, eval_batch, steps.frozen), {"parameters": params}),
        }


def lower_decode(config, model_config, mesh):
    """The decoding program (prefill and the decode loop, gptjax/decoding.py) at the generate.*
    shapes, on an abstract Decoder."""
    from flax import nnx

    from gptjax import decoding, partition
    from gptjax.lora import merge_lora
    from gptjax.model import Decoder, init_model

    g = config.generate
    gen_config = model_config.replace(remat=False)
    decoder = nnx.eval_shape(lambda: Decoder(merge_lora(partition.adapt(init_model(gen_config, "causal_lm"), config))))
    graphdef, params = nnx.split(decoder)
    from gptjax.steps import place

    params = place(params, sharding.shardings_for(params, mesh))
    rows, split, whole = g.batch_size, sharding.batch_sharding(mesh), sharding.replicated(mesh)
    new_tokens = decoding.bucket(g.max_new_tokens, decoding.Buckets().new_tokens)
    prompt = jax.ShapeDtypeStruct((rows, g.prompt_length), jnp.int32, sharding=split)
    row = {name: jax.ShapeDtypeStruct((rows,), dtype, sharding=split) for name, dtype in
           (("max_new", jnp.int32), ("seed", jnp.uint32), ("temperature", jnp.float32), ("top_k", jnp.int32),
            ("top_p", jnp.float32))}
    shared = {"eos_id": jax.ShapeDtypeStruct((), jnp.int32, sharding=whole),
              "pad_id": jax.ShapeDtypeStruct((), jnp.int32, sharding=whole),
              "stop_table": jax.ShapeDtypeStruct((model_config.vocab_size,), jnp.bool_, sharding=whole),
              "stop_seqs": jax.ShapeDtypeStruct((decoding.MAX_STOP_SEQS, decoding.MAX_STOP_LEN), jnp.int32,
                                                sharding=whole)}
    with jax.set_mesh(mesh):
        return (decoding._program(graphdef).lower(params, prompt, prompt, row, shared, new_tokens=new_tokens),
                {"parameters": params})


# ---------------------------------------------------------------------------------------------
# Reading them


def compile_program(lowered):
    """(the compiled program, seconds, None) or (None, seconds, the compiler's refusal): a
    program over the device's memory is refused by some compilers (TPU's) rather than compiled."""
    start = time.perf_counter()
    try:
        return lowered.compile(), time.perf_counter() - start, None
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError's class moved between jax releases
        message = str(e).strip().splitlines()
        return None, time.perf_counter() - start, next((line for line in message if line.strip()), type(e).__name__)


def loop_free_cost(config, model_config, mesh, program: str) -> dict | None:
    """The compiler's FLOPs and bytes of a train or eval step of all n_layer blocks. A rolled layer
    loop is counted once by XLA's cost analysis, so the same step is compiled with 1 and with 2
    blocks, both unrolled, and extrapolated: cost(L) = cost(1) + (L - 1) * (cost(2) - cost(1))."""
    costs = []
    for n in (1, 2):
        small = model_config.replace(n_layer=n, unroll=n)
        try:
            lowered = lower_steps(config, small, mesh)[program][0]
            costs.append(analysis.cost(lowered.compile()))
        except Exception:  # noqa: BLE001 - a target whose compiler counts nothing
            return None
    if any(c is None or c.get("flops") is None for c in costs):
        return None
    layers = model_config.n_layer
    return {key: costs[0][key] + (layers - 1) * (costs[1][key] - costs[0][key]) for key in ("flops", "bytes_accessed")
            if costs[0].get(key) is not None and costs[1].get(key) is not None}


def program_record(name: str, lowered, structs: dict, target, *, cost=None, timed: bool = True) -> dict:
    """What one program needs on each device of the target, and how long it might take (not
    `timed`: a program whose loop runs a number of times known only when it runs, decoding's)."""
    program, seconds, refusal = compile_program(lowered)
    record = {"program": name, "compile_time_s": round(seconds, 2)}
    kinds = {kind: analysis.per_device_bytes(tree) for kind, tree in structs.items()}
    if program is None:
        record.update(fits=False, refusal=refusal, memory_bytes={**kinds})
        return record
    memory = analysis.memory(program)
    record["memory_bytes"] = {**kinds, "temporaries": memory["temporaries"], "total": memory["total"]}
    record["fits"] = memory["total"] <= target.memory_bytes
    record["headroom_bytes"] = target.memory_bytes - memory["total"]
    record["collectives"] = analysis.collectives(program)
    record["attention"] = analysis.attention_kernel(program)
    cost = cost or (analysis.cost(program) if timed else None)
    if cost and cost.get("flops") is not None:
        record["compiled_flops"] = cost["flops"]
    if record.get("compiled_flops") and target.peak_flops > 0:  # a CPU's peak is measured, not known ahead
        link = target.host_link_bandwidth if target.num_hosts > 1 else target.link_bandwidth
        record["estimate"] = analysis.roofline(
            cost["flops"], cost.get("bytes_accessed") or 0.0,
            sum(c["bytes"] for c in record["collectives"].values()),
            peak_flops=target.peak_flops, memory_bandwidth=target.memory_bandwidth, link_bandwidth=link)
    return record


# ---------------------------------------------------------------------------------------------
# The plan of a config


def cudnn_loadable() -> bool:
    """Whether JAX finds a cuDNN library here, as compiling cuDNN's attention needs."""
    try:
        from jax._src.cudnn.fused_attention_stablehlo import check_cudnn_version

        check_cudnn_version()
        return True
    except Exception:  # noqa: BLE001 - no library, or one JAX cannot read
        return False


def mesh_for(config, target):
    return sharding.make_mesh(config.mesh, targets.devices(target))


def plan_config(config, target, *, programs=("train", "eval", "decode"), count_flops: bool = True) -> dict:
    """The plan of one config on one target: a record per program."""
    from gptjax.steps import check_batch_sizes

    mc = model_config_of(config)
    if target.platform == "gpu" and mc.attention == "cudnn" and not cudnn_loadable():
        raise SetupError(f"model.attention='cudnn' on --target={target.name}: compiling cuDNN's attention for a GPU "
                         "that is not attached needs cuDNN's own libraries (nvidia-cudnn-cu13 >= 9.15, < 9.28, with "
                         "cuBLAS and NVRTC) and a CUDA driver library, which gptjax[plan] does not bring; plan with "
                         "--config.model.attention=xla instead (XLA's attention keeps more memory than cuDNN's)")
    mesh = mesh_for(config, target)
    check_batch_sizes(config, mesh)
    s = shapes(config)
    lowered = lower_steps(config, mc, mesh, memory_limit=target.memory_bytes)
    mc = mc.replace(remat=lowered.pop("remat"))
    build_s = lowered.pop("build_s")
    out = []
    for name in programs:
        if name == "decode":
            if s["head"] != "causal_lm":
                continue
            low, structs = lower_decode(config, mc, mesh)
            out.append(program_record(name, low, structs, target, timed=False))
            continue
        low, structs = lowered[name]
        rolled = mc.layer_unroll(target.platform) < mc.n_layer
        cost = loop_free_cost(config, mc, mesh, name) if count_flops and rolled else None
        # A rolled loop uncounted would give a third of the FLOPs and a wrong estimate: none then.
        record = program_record(name, low, structs, target, cost=cost, timed=count_flops or not rolled)
        if name == "train":  # the compiles build_steps made to decide remat count too
            record["compile_time_s"] = round(record["compile_time_s"] + build_s, 2)
        rows = s["batch_size"] if name == "train" else s["eval_batch_size"]
        count = train_flops if name == "train" else forward_flops
        record["model_flops"] = count(mc, s["head"], s["num_labels"], rows, s["seq_len"])
        if "estimate" in record:
            step = record["estimate"]["estimated_step_s"]
            record["estimate"]["estimated_tokens_per_sec"] = rows * s["seq_len"] / step if step else None
        out.append(record)
    return {"target": target.name, "device_kind": target.device_kind, "num_devices": target.num_devices,
            "num_hosts": target.num_hosts, "device_memory_bytes": target.memory_bytes,
            "mesh": dict(zip(sharding.AXES, mesh.devices.shape)), "model": config.model.name_or_path or "gpt2",
            "dtype": mc.dtype, "remat": mc.remat, "batch_size": s["batch_size"], "seq_len": s["seq_len"],
            "grad_accum_steps": config.train.grad_accum_steps, "programs": out,
            "fits": all(p["fits"] for p in out)}


# ---------------------------------------------------------------------------------------------
# When it does not fit


def levers(config, num_devices: int) -> list[dict[str, str]]:
    """Overrides to try in order, each adding to the one before: recompute activations (where
    turned off), split parameters and optimizer state over every device (FSDP), then halve the rows
    a device takes at once, with gradient accumulation keeping the global batch."""
    tried, out = {}, []
    if config.model.remat is False:  # unset, build_steps has turned it on already where it helps
        tried["model.remat"] = "true"
        out.append(dict(tried))
    if config.mesh.fsdp != -1 and config.mesh.data != 1:
        tried.update({"mesh.data": "1", "mesh.fsdp": "-1"})
        out.append(dict(tried))
    # Each device splits its own rows into the micro-batches (steps.make_train_step).
    accum, rows = config.train.grad_accum_steps, max(config.train.batch_size // num_devices, 1)
    while rows % (accum * 2) == 0:
        accum *= 2
        out.append({**tried, "train.grad_accum_steps": str(accum)})
    return out


def find_fit(config, target) -> dict[str, str] | None:
    """The first lever (levers()) whose train step fits, or None."""
    from gptjax.config import apply_overrides, validate

    for overrides in levers(config, target.num_devices):
        try:
            candidate = validate(apply_overrides(config.copy_and_resolve_references(), overrides))
            plan = plan_config(candidate, target, programs=("train",), count_flops=False)
        except ConfigError as e:
            log.info("  %s: %s", _flags(overrides), e)
            continue
        log.info("  %s: %s", _flags(overrides), "fits" if plan["fits"] else "does not fit")
        if plan["fits"]:
            return overrides
    return None


def _flags(overrides: dict[str, str]) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


# ---------------------------------------------------------------------------------------------
# The mode


def format_plan(plan: dict) -> str:
    """The plan as a person reads it: a table of programs, then the collectives."""
    lines = [f"plan for {plan['target']} ({plan['num_devices']}x {plan['device_kind']}, {plan['num_hosts']} host(s), "
             f"{plan['device_memory_bytes'] / GiB:.1f} GiB a device), mesh {plan['mesh']}, {plan['model']}, "
             f"{plan['dtype']}, remat {plan['remat']}, batch {plan['batch_size']} x {plan['seq_len']}:"]
    header = ("program", "fits", "parameters", "optimizer", "temporaries", "total", "headroom",
              "TFLOP/device", "attention", "compile s", "est. step ms", "est. tokens/s")
    rows = []
    for p in plan["programs"]:
        m, e = p.get("memory_bytes", {}), p.get("estimate", {})
        rows.append((p["program"], "yes" if p["fits"] else "NO", _size(m.get("parameters")), _size(m.get("optimizer")),
                     _size(m.get("temporaries")), _size(m.get("total")), _size(p.get("headroom_bytes")),
                     "-" if p.get("compiled_flops") is None else f"{p['compiled_flops'] / 1e12:.2f}",
                     p.get("attention", "-"), f"{p['compile_time_s']:.1f}",
                     "-" if not e else f"{1e3 * e['estimated_step_s']:.1f}",
                     "-" if not e.get("estimated_tokens_per_sec") else f"{e['estimated_tokens_per_sec']:.0f}"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    for p in plan["programs"]:
        if p.get("refusal"):
            lines.append(f"  {p['program']}: the compiler refused it: {p['refusal']}")
        if any(c["count"] for c in p.get("collectives", {}).values()):
            parts = ", ".join(f"{c['count']} {kind} ({_size(c['bytes'])})" for kind, c in p["collectives"].items()
                              if c["count"])
            lines.append(f"  {p['program']} collectives a step, a device: {parts}")
    lines.append("  est.: a roofline estimate (FLOPs over peak, bytes over bandwidth, collectives over the link), "
                 "not a measurement")
    return "\n".join(lines)


def _size(n) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def plan_record(plan: dict, config_name: str) -> dict:
    """The train program's plan as a benchmark record (bench/records.py), marked as an estimate, so
    that `compare` shows it beside measured records of the same config and hardware."""
    train = next(p for p in plan["programs"] if p["program"] == "train")
    e = train.get("estimate", {})
    return {
        "framework": "gptjax", "estimate": True, "config": config_name, "model": plan["model"],
        "batch_size": plan["batch_size"], "seq_len": plan["seq_len"], "dtype": plan["dtype"],
        "remat": plan["remat"], "grad_accum_steps": plan["grad_accum_steps"], "target": plan["target"],
        "device_kind": plan["device_kind"], "num_devices": plan["num_devices"], "mesh": plan["mesh"],
        "platform": targets.get(plan["target"]).platform, "fits": train["fits"],
        "attention": train.get("attention"), "compile_time_s": train["compile_time_s"],
        "peak_memory_bytes": train.get("memory_bytes", {}).get("total"),
        "memory_source": "XLA's memory analysis of the train step compiled for the target (plan mode)",
        "step_time_ms": None if not e else 1e3 * e["estimated_step_s"],
        "tokens_per_sec": e.get("estimated_tokens_per_sec"), "mfu": None,
        "flops_per_step": train.get("model_flops"), "compiled_flops": train.get("compiled_flops"),
        "versions": records.versions(),
    }


def run(config, workdir, target_name: str, *, config_name: str = "", results: str | None = None) -> int:
    """--mode=plan: prints the plan, writes WORKDIR/plan.json (and a record to `results`); returns
    the exit status: 0 when every program fits, DOES_NOT_FIT when one does not."""
    if target_name == "list":
        print(targets.listing())
        return 0
    target = targets.get(target_name)
    if (advice := targets.compiler_missing(target)) is not None:
        raise SetupError(f"--target={target.name} needs its compiler, which is not installed: {advice}")
    log.info("compiling the programs for %s (%d devices; no device is used) ...", target.name, target.num_devices)
    plan = plan_config(config, target)
    print(format_plan(plan))
    if not plan["fits"]:
        log.info("the train step does not fit on %s: trying the levers in turn ...", target.name)
        found = find_fit(config, target)
        plan["suggested_overrides"] = found
        if found:
            print(f"fits with: {_flags(found)}")
        else:
            print(f"nothing tried fits on {target.name}: a smaller model, a shorter data.max_length, or more devices")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    records.finish(plan_record(plan, config_name), None, results)
    return 0 if plan["fits"] else DOES_NOT_FIT

