"""What a compiled program needs and does, read from the program itself: memory by kind, the
collectives it runs, its FLOPs and bytes, the attention kernel it got, and a roofline estimate.

Every function takes a `jax.stages.Compiled` (from `jax.jit(f).lower(...).compile()`) for any
platform: this machine's CPU, or a TPU or GPU that is not attached (jax.experimental.topologies).
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np

from gptjax.steps import memory_total
from gptjax.errors import ConfigError

# Bytes per element of each HLO element type; sub-byte types count as fractions, and the many
# 8- and 4-bit float types (f8e4m3fn, f8e5m2, f4e2m1fn...) are read from their prefix.
_ITEMSIZE = {
    "pred": 1, "s1": 0.125, "u1": 0.125, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1,
    "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8,
    "c64": 8, "c128": 16, "token": 0,
}


def _itemsize(dtype: str) -> float | None:
    if dtype in _ITEMSIZE:
        return _ITEMSIZE[dtype]
    return {"f8": 1, "f6": 0.75, "f4": 0.5}.get(dtype[:2])
COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([^\]]*)\]")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation)="
                      r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")


def memory(compiled) -> dict[str, int]:
    """Bytes per device by kind, from XLA's memory analysis of the compiled program.

    "total" is arguments + outputs + temporaries - aliased (donated buffers reused as outputs) +
    generated code: a TPU keeps its program in HBM and says so here; CPU and GPU report 0 for it.
    """
    m = compiled.memory_analysis()
    kinds = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "generated_code": m.generated_code_size_in_bytes,
    }
    kinds = {k: int(v) for k, v in kinds.items()}
    kinds["total"] = memory_total(m)  # what build_steps weighs against a device's memory
    return kinds


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of arrays or ShapeDtypeStructs carrying shardings.

    The most loaded device is counted: a shard of an uneven split is the larger one. A leaf
    without a sharding counts whole, as a replicated one does.
    """
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            shape = tuple(sharding.shard_shape(shape))
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape as the text prints it (`f32[8,128]{1,0}`, or a tuple of such)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if _itemsize(dtype) is None:
            continue
        sizes = [int(re.sub(r"\D", "", d)) for d in dims.split(",") if re.sub(r"\D", "", d)]
        total += math.prod(sizes) * _itemsize(dtype)
    return int(total)


def _split_shape(rest: str) -> tuple[str, str]:
    """The shape and what follows it, in the text after an instruction's `=`."""
    if not rest.startswith("("):
        shape, _, tail = rest.partition(" ")
        return shape, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            shape, tail = rest[: i + 1], rest[i + 1:]
            # a layout such as {1,0:T(8,128)} may follow a tuple's closing parenthesis
            while tail.startswith("{"):
                tail = tail[tail.index("}") + 1:]
            return shape, tail.lstrip()
    return rest, ""


def parse_hlo(text: str) -> tuple[dict[str, list[dict]], str | None]:
    """Computations of an HLO module's text: name -> instructions (name, shape, opcode, line),
    and the entry computation's name."""
    computations: dict[str, list[dict]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = match.group(1)
                computations[current] = []
                entry = current if line.startswith("ENTRY") else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            shape, tail = _split_shape(match.group(2))
            opcode = tail.partition("(")[0].strip()
            computations[current].append({"name": match.group(1), "shape": shape, "opcode": opcode, "line": line})
    return computations, entry


def _callees(line: str) -> list[tuple[str, str]]:
    """(attribute, computation) pairs an instruction calls: body=, condition=, calls=, to_apply=..."""
    found = []
    for attr, names in _CALLEES.findall(line):
        for name in names.strip("{}").split(","):
            name = name.strip().lstrip("%")
            if name:
                found.append((attr, name))
    return found


def _trip_count(instruction: dict, computations: dict[str, list[dict]]) -> int | None:
    """How many times a while loop runs its body, when the HLO says so or its condition shows it."""
    stated = _TRIP_COUNT.search(instruction["line"])
    if stated:
        return int(stated.group(1))
    condition = dict(_callees(instruction["line"])).get("condition")
    return _bound_of_condition(computations.get(condition, []))


def _bound_of_condition(condition: list[dict]) -> int | None:
    """N in a loop condition `counter < N` with N a constant (jax's scan and fori_loop count from
    0 by 1, so N is the trip count); None for any other condition."""
    constants = {}
    for instruction in condition:
        value = re.search(r"\bconstant\((-?\d+)\)", instruction["line"])
        if instruction["opcode"] == "constant" and value:
            constants[instruction["name"]] = int(value.group(1))
    root = _root(condition) if condition else None
    if root is None or root["opcode"] != "compare" or "direction=LT" not in root["line"]:
        return None
    operands = re.findall(r"%([\w.\-]+)", root["line"].split("compare(", 1)[1].split(")", 1)[0])
    if len(operands) == 2 and operands[1] in constants:
        return constants[operands[1]]
    return None


def _scopes(computations: dict[str, list[dict]], entry: str) -> tuple[dict[str, int], dict[str, bool]]:
    """How many times each control-flow computation runs per call of the program.

    A scope is the entry, a while body, a conditional's branch or a called computation; a fusion
    or an async wrapper belongs to the scope that calls it. Returns the runs of each scope and
    whether a loop on the way to it had a trip count that could not be read (counted as 1).
    """
    callers: dict[str, list[tuple[str, int, bool]]] = {}
    for scope in _reachable_scopes(computations, entry):
        for instruction in _inlined(scope, computations):
            trips = _trip_count(instruction, computations) if instruction["opcode"] == "while" else 1
            for callee in _scope_callees(instruction, computations):
                callers.setdefault(callee, []).append((scope, 1 if trips is None else trips, trips is None))
    runs: dict[str, int] = {entry: 1}
    unknown: dict[str, bool] = {entry: False}

    def resolve(scope: str) -> None:
        if scope in runs:
            return
        runs[scope], unknown[scope] = 0, False  # a cycle (never in valid HLO) stops here
        for caller, times, unread in callers.get(scope, []):
            resolve(caller)
            runs[scope] += runs[caller] * times
            unknown[scope] = unknown[scope] or unknown[caller] or unread

    for scope in callers:
        resolve(scope)
    return runs, unknown


def _scope_callees(instruction: dict, computations: dict[str, list[dict]]) -> list[str]:
    """The control-flow computations an instruction runs: a loop's body and condition, a
    conditional's branches, a call's computation."""
    wanted = ("body", "condition", "branch_computations", "true_computation", "false_computation")
    if instruction["opcode"] == "call":
        wanted += ("to_apply", "calls")
    return [c for attr, c in _callees(instruction["line"]) if attr in wanted and c in computations]


def _reachable_scopes(computations: dict[str, list[dict]], entry: str) -> list[str]:
    seen, todo = [], [entry]
    while todo:
        scope = todo.pop()
        if scope in seen:
            continue
        seen.append(scope)
        for instruction in _inlined(scope, computations):
            todo.extend(_scope_callees(instruction, computations))
    return seen


def _inlined(scope: str, computations: dict[str, list[dict]]) -> list[dict]:
    """The instructions of a scope with those of the fusions and async wrappers it calls."""
    seen, todo, found = set(), [scope], []
    while todo:
        name = todo.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for instruction in computations[name]:
            found.append({**instruction, "computation": name})
            if instruction["opcode"] in ("while", "conditional", "call"):
                continue
            todo.extend(callee for attr, callee in _callees(instruction["line"]) if attr == "calls")
    return found


def _root(computation: list[dict]) -> dict:
    return next((i for i in computation if re.match(r"^\s*ROOT\s", i["line"])), computation[-1])


def _collective_kind(opcode: str) -> str | None:
    """The collective an opcode performs, the async -start form included; None for -done and others."""
    if opcode.endswith(("-done", "-update")):
        return None
    base = opcode.removesuffix("-start")
    return base if base in COLLECTIVE_KINDS else None


def _result_bytes(instruction: dict, done_shapes: dict[str, str]) -> int:
    """Bytes of a collective's result per device; a -start's tuple also holds its operands, so its
    -done's shape is used."""
    if instruction["opcode"].endswith("-start") and instruction["name"] in done_shapes:
        return shape_bytes(done_shapes[instruction["name"]])
    return shape_bytes(instruction["shape"])


def collectives(compiled) -> dict[str, dict]:
    """The collectives a compiled program runs per device and per call, by kind.

    Each kind maps to {"count", "bytes", "unknown_trip_count"}: how many run, the bytes of their
    results on one device (tuple results summed), and how many of them sit in a loop whose trip
    count could not be read. Async collectives count once, at their -start. An op in a while
    body counts once per iteration: the trip count is the loop's stated known_trip_count or, where
    XLA does not state one (TPU), the N of a `counter < N` condition. Where neither is there, the
    op counts as if the loop ran once, and shows in "unknown_trip_count". A collective split into
    several fusions (TPU async collective fusions) counts once per channel; TPU's reduce-scatter
    (an all-reduce fused with the slice of it each device keeps) counts as one. Conditional branches
    count as if each ran.
    """
    return collectives_of_text(compiled.as_text())


def collectives_of_text(text: str) -> dict[str, dict]:
    """collectives() of an optimized HLO module's text."""
    computations, entry = parse_hlo(text)
    found = {kind: {"count": 0, "bytes": 0, "unknown_trip_count": 0} for kind in COLLECTIVE_KINDS}
    if entry is None:
        return found
    runs, unknown = _scopes(computations, entry)
    done_shapes = _done_shapes(computations)
    for scope, times in runs.items():
        instructions = _inlined(scope, computations)
        counted = set()
        for instruction in instructions:
            kind = _collective_kind(instruction["opcode"])
            if kind is None:
                continue
            channel = _CHANNEL.search(instruction["line"])
            key = (kind, channel.group(1)) if channel else (instruction["computation"], instruction["name"])
            if key in counted:
                continue
            counted.add(key)
            size = _result_bytes(instruction, done_shapes)
            if kind == "all-reduce" and instruction["computation"].startswith("all-reduce-scatter"):
                # a TPU reduce-scatter: an all-reduce and a slice of it, fused; the slice is the result
                kind, size = "reduce-scatter", shape_bytes(_root(computations[instruction["computation"]])["shape"])
            found[kind]["count"] += times
            found[kind]["bytes"] += times * size
            found[kind]["unknown_trip_count"] += times if unknown[scope] else 0
    return found


def _done_shapes(computations: dict[str, list[dict]]) -> dict[str, str]:
    """The result shape of each async -start's -done, by the -start's name (unique in a module;
    the pair may sit in different computations when XLA pipelines a loop)."""
    shapes = {}
    for instructions in computations.values():
        for instruction in instructions:
            operand = re.search(r"-done\(\s*%([\w.\-]+)", instruction["line"])
            if instruction["opcode"].endswith("-done") and operand:
                shapes[operand.group(1)] = instruction["shape"]
    return shapes


def cost(compiled) -> dict:
    """The compiler's own count of a program's work per device: {"flops", "bytes_accessed", "source"}.

    From compiled.cost_analysis() where the platform gives one (CPU, TPU); where it does not (a
    GPU that is not attached) from XLA's HLO cost analysis of the optimized module, run by the CPU
    client. Either counts the body of a rolled loop (scan, while) once, not once per iteration:
    a program with a rolled layer loop reports about one layer's FLOPs for all of them.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    source = "cost_analysis"
    if not analysis or "flops" not in analysis:
        analysis, source = _hlo_cost_analysis(compiled), "hlo_cost_analysis"
    if not analysis:
        return {"flops": None, "bytes_accessed": None, "source": None}
    bytes_accessed = analysis.get("bytes accessed")
    return {"flops": float(analysis["flops"]) if "flops" in analysis else None,
            "bytes_accessed": float(bytes_accessed) if bytes_accessed is not None else None,
            "source": source}


def _hlo_cost_analysis(compiled) -> dict | None:
    """XLA's HLO cost analysis of the optimized module, or None where this jax lacks it (private API)."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    if not hasattr(_jax, "hlo_module_cost_analysis"):
        return None
    modules = compiled.runtime_executable().hlo_modules()
    if not modules:
        return None
    return dict(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), modules[0]))


def flops(compiled) -> float | None:
    """cost(compiled)["flops"]: a rolled loop's body counted once (see cost)."""
    return cost(compiled)["flops"]


def attention_kernel(program) -> str:
    """Which attention implementation a program got: "cudnn" (cuDNN's fused attention),
    "pallas_splash" or "pallas_flash" (a Pallas kernel, TPU or GPU), else "xla" (attention written
    out in XLA ops). Takes anything with as_text(): a Compiled, or a Lowered when the target cannot
    compile the kernel on this machine."""
    text = program.as_text()
    if "__cudnn$fmha" in text:
        return "cudnn"
    kernels = [line for line in text.splitlines() if _is_pallas_call(line)]
    if any("splash" in line.lower() for line in kernels):
        return "pallas_splash"
    if any("flash" in line.lower() or "attention" in line.lower() or "mha" in line.lower() for line in kernels):
        return "pallas_flash"
    return "xla"


def _is_pallas_call(line: str) -> bool:
    return any(target in line for target in ('"tpu_custom_call"', "@tpu_custom_call", "__gpu$xla.gpu.triton",
                                             "mosaic_gpu", "triton_kernel_call"))


def roofline(flops: float, bytes_accessed: float, collective_bytes: float, *, peak_flops: float,
             memory_bandwidth: float, link_bandwidth: float) -> dict:
    """An ESTIMATE of one step's time, not a measurement: all figures per device, rates per second.

    Compute and memory traffic overlap (the larger of flops / peak_flops and bytes_accessed /
    memory_bandwidth); collectives are assumed not to overlap with either and add
    collective_bytes / link_bandwidth (collectives()' bytes: a ring all-reduce moves up to twice
    its result over the links, so this term is a lower bound of its own). "bound" names the
    largest of the three terms.
    """
    for name, rate in (("peak_flops", peak_flops), ("memory_bandwidth", memory_bandwidth),
                       ("link_bandwidth", link_bandwidth)):
        if not rate or rate <= 0:
            raise ConfigError(f"roofline: {name} must be a positive rate, got {rate!r}")
    terms = {
        "compute": flops / peak_flops,
        "memory": bytes_accessed / memory_bandwidth,
        "collectives": collective_bytes / link_bandwidth,
    }
    return {
        "estimated_step_s": max(terms["compute"], terms["memory"]) + terms["collectives"],
        "estimated_compute_s": terms["compute"],
        "estimated_memory_s": terms["memory"],
        "estimated_collectives_s": terms["collectives"],
        "bound": max(terms, key=terms.get),
        "assumes": "no overlap of collectives with compute; compute and memory traffic overlap",
    }
