"""Reading a compiled program: memory, collectives, FLOPs, attention kernel, roofline.

CPU checks always run; the compile-only TPU and GPU checks run where libtpu and the CUDA plugin
are installed (pip install 'gptjax[plan]', Python >= 3.12), each in a subprocess of its own.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from gptjax.bench import compiled as cp

# CI's newest-JAX tier has the compilers (gptjax[plan]): these run there.
pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
PLAN_EXTRA = "needs pip install 'gptjax[plan]' (Python >= 3.12)"


def _importable(*names):
    return any(importlib.util.find_spec(name) is not None for name in names)


def _plugin_importable():
    try:
        return _importable("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")
    except ModuleNotFoundError:
        return False


HAS_LIBTPU = sys.version_info >= (3, 12) and _importable("libtpu")
HAS_CUDA_PLUGIN = sys.version_info >= (3, 12) and _plugin_importable()


def _run_script(script, devices=None, timeout=600):
    # compile-only libtpu needs no chip, so another process holding libtpu's lock is no reason to stop
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- this machine's CPU


def test_memory_counts_a_donated_argument_as_aliased():
    step = jax.jit(lambda w, x: (w - 0.1 * (x.T @ (x @ w)), jnp.sum(x)), donate_argnums=0)
    w, x = jnp.ones((64, 64)), jnp.ones((32, 64))
    got = cp.memory(step.lower(w, x).compile())
    assert got["aliased"] == w.nbytes
    assert got["arguments"] == w.nbytes + x.nbytes
    assert got["total"] == got["arguments"] + got["outputs"] + got["temporaries"] - got["aliased"] + got["generated_code"]
    undonated = cp.memory(jax.jit(lambda w, x: (w - 0.1 * (x.T @ (x @ w)), jnp.sum(x))).lower(w, x).compile())
    assert undonated["aliased"] == 0


def test_flops_of_a_matmul_is_2mnk():
    m, k, n = 64, 48, 32
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert cp.flops(compiled) == 2 * m * n * k
    got = cp.cost(compiled)
    assert got["source"] == "cost_analysis" and got["bytes_accessed"] >= 4 * (m * k + k * n + m * n)


class _WithoutCostAnalysis:
    """A compiled program whose platform gives no cost analysis, as a compile-only GPU does."""

    def __init__(self, compiled):
        self._compiled = compiled

    def cost_analysis(self):
        return None

    def runtime_executable(self):
        return self._compiled.runtime_executable()


def test_cost_falls_back_to_hlo_cost_analysis_when_the_platform_gives_none():
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 48)), jnp.ones((48, 32))).compile()
    got = cp.cost(_WithoutCostAnalysis(compiled))
    assert got["source"] == "hlo_cost_analysis"
    assert got["flops"] == 2 * 64 * 48 * 32
    assert got["bytes_accessed"] == pytest.approx(cp.cost(compiled)["bytes_accessed"], rel=0.01)


def _layers(unroll):
    def body(h, w):
        return jnp.tanh(h @ w), None

    def forward(h, ws):
        return jax.lax.scan(body, h, ws, unroll=unroll)[0]

    return jax.jit(forward).lower(jnp.ones((16, 64)), jnp.ones((4, 64, 64))).compile()


def test_flops_count_a_rolled_loop_body_once_and_an_unrolled_one_per_layer():
    """What the coordinator relies on: a rolled scan of 4 layers reports one layer's matmul."""
    one_layer = 2 * 16 * 64 * 64
    rolled, unrolled = cp.flops(_layers(unroll=1)), cp.flops(_layers(unroll=True))
    assert one_layer <= rolled < 2 * one_layer
    assert 4 * one_layer <= unrolled < 5 * one_layer


def test_collectives_of_a_one_device_program_are_none():
    got = cp.collectives(jax.jit(lambda a, b: a @ b).lower(jnp.ones((8, 8)), jnp.ones((8, 8))).compile())
    assert set(got) == set(cp.COLLECTIVE_KINDS) and all(v["count"] == 0 and v["bytes"] == 0 for v in got.values())


EIGHT_CPU = """
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gptjax.bench import compiled as cp
mesh = Mesh(np.array(jax.devices()).reshape(8), ("data",))
def S(shape, spec, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w))
out = {}
out["bytes"] = {
    "replicated": cp.per_device_bytes(S((256, 128), P())),
    "batch": cp.per_device_bytes(S((64, 256), P("data"))),
    "tree": cp.per_device_bytes({"w": S((256, 128), P(None, "data")), "b": S((6,), P(), jnp.bfloat16),
                                 "arr": jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("data")))}),
}
with jax.set_mesh(mesh):
    data = jax.jit(jax.grad(loss)).lower(S((256, 128), P()), S((64, 256), P("data"))).compile()
    fsdp = jax.jit(jax.grad(loss)).lower(S((256, 128), P("data")), S((64, 256), P("data"))).compile()
out["data"], out["fsdp"] = cp.collectives(data), cp.collectives(fsdp)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_cpu():
    return _run_script(EIGHT_CPU, devices=8)


def test_per_device_bytes_counts_each_devices_shard(eight_cpu):
    assert eight_cpu["bytes"]["replicated"] == 256 * 128 * 4
    assert eight_cpu["bytes"]["batch"] == 64 * 256 * 4 // 8
    assert eight_cpu["bytes"]["tree"] == 256 * 128 * 4 // 8 + 6 * 2 + 16 * 4 * 4 // 8


def test_a_batch_sharded_gradient_is_all_reduced_whole(eight_cpu):
    all_reduce = eight_cpu["data"]["all-reduce"]
    assert all_reduce["count"] >= 1 and all_reduce["bytes"] == 256 * 128 * 4
    assert eight_cpu["data"]["all-gather"]["count"] == 0


def test_an_fsdp_sharded_weight_is_all_gathered(eight_cpu):
    all_gather = eight_cpu["fsdp"]["all-gather"]
    assert all_gather["count"] >= 1 and all_gather["bytes"] >= 256 * 128 * 4


# ---------------------------------------------------------------- HLO text, every platform's forms

ASYNC_AND_LOOPS = """HloModule jit_step, entry_computation_layout={()->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%body (p: (s32[], f32[32,128])) -> (s32[], f32[32,128]) {
  %p = (s32[], f32[32,128]{1,0}) parameter(0)
  %g = f32[32,128]{1,0} get-tuple-element(%p), index=1
  %all-gather-start = ((f32[32,128]{1,0}), f32[128,128]{1,0}) all-gather-start(%g), channel_id=1, dimensions={0}
  %all-gather-done = f32[128,128]{1,0} all-gather-done(%all-gather-start)
  ROOT %t = (s32[], f32[32,128]{1,0}) tuple(%i, %g)
}

%cond (p: (s32[], f32[32,128])) -> pred[] {
  %p = (s32[], f32[32,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%tpu_body (p: (s32[], bf16[8,64])) -> (s32[], bf16[8,64]) {
  %p = (s32[]{:T(128)}, bf16[8,64]{1,0:T(8,128)(2,1)}) parameter(0)
  %start = (bf16[8,64]{1,0:T(8,128)(2,1)S(1)}, u32[]{:S(2)}) fusion(%p), kind=kCustom, calls=%ar_start
  ROOT %done = bf16[8,64]{1,0:T(8,128)(2,1)S(1)} fusion(%start), kind=kCustom, calls=%ar_done
}

%ar_start (a: bf16[8,64]) -> (bf16[8,64], u32[]) {
  %a = bf16[8,64]{1,0} parameter(0)
  ROOT %all-reduce.1 = bf16[8,64]{1,0:T(8,128)(2,1)} all-reduce(%a), channel_id=7, to_apply=%add
}

%ar_done (a: bf16[8,64]) -> bf16[8,64] {
  %a = bf16[8,64]{1,0} parameter(0)
  ROOT %all-reduce.2 = bf16[8,64]{1,0:T(8,128)(2,1)} all-reduce(%a), channel_id=7, to_apply=%add
}

%tpu_cond (p: (s32[], bf16[8,64])) -> pred[] {
  %p = (s32[]{:T(128)}, bf16[8,64]{1,0:T(8,128)(2,1)}) parameter(0)
  %c = s32[]{:T(128)} constant(3)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

%odd_cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %j = s32[] get-tuple-element(%p), index=1
  ROOT %lt = pred[] compare(%i, %j), direction=LT
}

%odd_body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %v = f32[4]{0} get-tuple-element(%p), index=1
  %cp = f32[4]{0} collective-permute(%v), channel_id=9, source_target_pairs={{0,1},{1,0}}
  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %cp)
}

%all-reduce-scatter (input: f32[256,128]) -> f32[64,128] {
  %input = f32[256,128]{1,0:T(8,128)} parameter(0)
  %all-reduce.2 = f32[256,128]{1,0:T(8,128)} all-reduce(%input), channel_id=4, to_apply=%add
  ROOT %dynamic-slice.3 = f32[64,128]{1,0:T(8,128)} dynamic-slice(%all-reduce.2, %o, %z), dynamic_slice_sizes={64,128}
}

ENTRY %main (a: f32[32,128]) -> f32[] {
  %a = f32[32,128]{1,0} parameter(0)
  %tpu_rs = f32[64,128]{1,0:T(8,128)} fusion(%b), kind=kCustom, calls=%all-reduce-scatter
  %rs = f32[4,128]{1,0} reduce-scatter(%a), channel_id=2, dimensions={0}, to_apply=%add
  %ars = (f32[16]{0}, f32[16]{0}) all-reduce-start(%x, %y), channel_id=3, to_apply=%add
  %ard = (f32[16]{0}, f32[16]{0}) all-reduce-done(%ars)
  %w = (s32[], f32[32,128]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %w2 = (s32[]{:T(128)}, bf16[8,64]{1,0:T(8,128)(2,1)}) while(%init2), condition=%tpu_cond, body=%tpu_body
  %w3 = (s32[], f32[4]{0}) while(%init3), condition=%odd_cond, body=%odd_body
  ROOT %r = f32[] constant(0)
}
"""


def test_collectives_of_text_count_async_ops_once_with_their_results_bytes():
    got = cp.collectives_of_text(ASYNC_AND_LOOPS)
    assert got["reduce-scatter"] == {"count": 2, "bytes": 4 * 128 * 4 + 64 * 128 * 4, "unknown_trip_count": 0}
    assert got["all-reduce"]["count"] == 1 + 3  # the entry's async pair, and the TPU loop's 3 trips
    assert got["all-reduce"]["bytes"] == 2 * 16 * 4 + 3 * 8 * 64 * 2


def test_collectives_in_a_loop_count_once_per_stated_trip():
    got = cp.collectives_of_text(ASYNC_AND_LOOPS)["all-gather"]
    assert got == {"count": 12, "bytes": 12 * 128 * 128 * 4, "unknown_trip_count": 0}


def test_a_loop_of_unknown_trip_count_counts_once_and_says_so():
    got = cp.collectives_of_text(ASYNC_AND_LOOPS)["collective-permute"]
    assert got == {"count": 1, "bytes": 16, "unknown_trip_count": 1}


PIPELINED = """HloModule pipelined

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %cps = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%v), channel_id=3, source_target_pairs={{0,1}}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %v)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main () -> f32[8] {
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"2"}}
  ROOT %cpd = f32[8]{0} collective-permute-done(%cps)
}
"""


def test_an_async_start_takes_the_bytes_of_its_done_in_another_computation():
    got = cp.collectives_of_text(PIPELINED)["collective-permute"]
    assert got == {"count": 2, "bytes": 2 * 8 * 4, "unknown_trip_count": 0}


def test_shape_bytes_reads_layouts_tiles_and_tuples():
    assert cp.shape_bytes("f32[8,128]{1,0}") == 4096
    assert cp.shape_bytes("bf16[1,128,128]{2,1,0:T(8,128)(2,1)S(1)}") == 128 * 128 * 2
    assert cp.shape_bytes("(f32[2]{0}, s8[3], pred[])") == 8 + 3 + 1
    assert cp.shape_bytes("f32[<=10]") == 40
    assert cp.shape_bytes("f8e4m3fn[16]{0}") == 16 and cp.shape_bytes("s4[16]{0:E(4)}") == 8


class _Text:
    def __init__(self, text):
        self.text = text

    def as_text(self):
        return self.text


def test_attention_kernel_names_the_fused_kernels():
    assert cp.attention_kernel(_Text('custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"')) == "cudnn"
    splash = 'custom-call(%q), custom_call_target="tpu_custom_call", metadata={op_name="splash_mha_fwd"}'
    assert cp.attention_kernel(_Text(splash)) == "pallas_splash"
    flash = 'custom-call(%q), custom_call_target="tpu_custom_call", metadata={op_name="flash_attention"}'
    assert cp.attention_kernel(_Text(flash)) == "pallas_flash"
    assert cp.attention_kernel(_Text('dot(%q, %k)\ncustom-call(), custom_call_target="tpu_custom_call", '
                                     'metadata={op_name="my_matmul"}')) == "xla"


def test_attention_kernel_of_xla_attention_on_cpu_is_xla():
    q = jnp.ones((1, 16, 2, 8))
    compiled = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, implementation="xla")).lower(q).compile()
    assert cp.attention_kernel(compiled) == "xla"


def test_roofline_is_the_larger_of_compute_and_memory_plus_collectives():
    got = cp.roofline(4e12, 1e9, 2e9, peak_flops=1e15, memory_bandwidth=1e12, link_bandwidth=1e11)
    assert got["estimated_step_s"] == pytest.approx(0.004 + 0.02)
    assert got["bound"] == "collectives"
    memory_bound = cp.roofline(1e9, 4e10, 0, peak_flops=1e15, memory_bandwidth=1e12, link_bandwidth=1e11)
    assert memory_bound["bound"] == "memory" and memory_bound["estimated_step_s"] == pytest.approx(0.04)
    assert all(k.startswith("estimated_") for k in got if k.endswith("_s"))


def test_roofline_refuses_a_rate_that_is_not_positive():
    from gptjax.errors import ConfigError

    with pytest.raises(ConfigError, match="link_bandwidth"):
        cp.roofline(1.0, 1.0, 1.0, peak_flops=1e15, memory_bandwidth=1e12, link_bandwidth=0)


# ---------------------------------------------------------------- compile-only TPU and GPU

GPU_TARGET = """gpu_device_info { threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535 memory_bandwidth: 3350000000000
l2_cache_size: 52428800 clock_rate_ghz: 1.98 device_memory_size: 85520809984 shared_memory_per_block_optin: 232448
cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536 }
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

DEVICES = {
    "tpu": 'topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu", chip_config_name="default", '
           'chips_per_host_bounds=(2, 2, 1), num_slices=1).devices',
    "gpu": f'topologies.get_topology_desc(platform="cuda", target_config={GPU_TARGET!r}, topology="1x1x4").devices',
}

COMPILE_ONLY = """
import json, jax, jax.numpy as jnp, numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gptjax.bench import compiled as cp
mesh = Mesh(np.array(DEVICES).reshape(4), ("data",))
def S(shape, spec, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w))
def attention(implementation):
    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation))
out = {}
with jax.set_mesh(mesh):
    matmul = jax.jit(lambda a, b: a @ b).lower(S((512, 256), P("data")), S((256, 384), P())).compile()
    out["cost"], out["memory"] = cp.cost(matmul), cp.memory(matmul)
    data = jax.jit(jax.grad(loss)).lower(S((256, 128), P()), S((64, 256), P("data"))).compile()
    fsdp = jax.jit(jax.grad(loss)).lower(S((256, 128), P("data")), S((64, 256), P("data"))).compile()
    scattered = jax.jit(jax.grad(loss), out_shardings=NamedSharding(mesh, P("data"))).lower(
        S((256, 128), P("data")), S((64, 256), P("data"))).compile()
    out["data"], out["fsdp"], out["scattered"] = cp.collectives(data), cp.collectives(fsdp), cp.collectives(scattered)
    for unroll in (1, True):
        layers = jax.jit(lambda h, ws: jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), h, ws, unroll=unroll)[0])
        out[f"layers_unroll_{unroll}"] = cp.flops(layers.lower(S((16, 64), P()), S((4, 64, 64), P())).compile())
    q = S((4, 256, 4, 64), P("data"), jnp.bfloat16)
    out["xla_attention"] = cp.attention_kernel(attention("xla").lower(q, q, q).compile())
if PLATFORM == "tpu":
    from jax.experimental.pallas.ops.tpu import flash_attention
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel, splash_attention_mask
    causal = splash_attention_mask.MultiHeadMask([splash_attention_mask.CausalMask((512, 512))] * 4)
    splash = splash_attention_kernel.make_splash_mha(causal, head_shards=1, q_seq_shards=1)  # builds arrays: off the mesh
    one = Mesh(np.array(DEVICES)[:1], ("data",))
    q = jax.ShapeDtypeStruct((1, 4, 512, 128), jnp.bfloat16, sharding=NamedSharding(one, P()))
    with jax.set_mesh(one):
        flash = jax.jit(lambda q, k, v: flash_attention.flash_attention(q, k, v, causal=True))
        out["flash_attention"] = cp.attention_kernel(flash.lower(q, q, q).compile())
        q = jax.ShapeDtypeStruct((4, 512, 128), jnp.bfloat16, sharding=NamedSharding(one, P()))
        out["splash_attention"] = cp.attention_kernel(jax.jit(splash).lower(q, q, q).compile())
if PLATFORM == "gpu":
    one = Mesh(np.array(DEVICES)[:1], ("data",))  # sharded, cuDNN's call hides behind custom partitioning until compiled
    q = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.bfloat16, sharding=NamedSharding(one, P()))
    with jax.set_mesh(one):
        try:
            out["cudnn_attention"] = cp.attention_kernel(attention("cudnn").lower(q, q, q).compile())
            out["cudnn_compiled"] = True
        except Exception as e:  # no cuDNN library on this machine: read the lowered program instead
            from jax._src.cudnn import fused_attention_stablehlo
            fused_attention_stablehlo.check_cudnn_version = lambda: 91000  # the target's cuDNN 9.10
            out["cudnn_attention"] = cp.attention_kernel(attention("cudnn").lower(q, q, q))
            out["cudnn_compiled"] = str(e).splitlines()[0]
print(json.dumps(out))
"""


def _compile_only(platform):
    script = COMPILE_ONLY.replace("DEVICES", DEVICES[platform]).replace("PLATFORM", repr(platform))
    return _run_script(script)


@pytest.fixture(scope="module", params=[
    pytest.param("tpu", marks=pytest.mark.skipif(not HAS_LIBTPU, reason=f"libtpu not importable: {PLAN_EXTRA}")),
    pytest.param("gpu", marks=pytest.mark.skipif(not HAS_CUDA_PLUGIN,
                                                 reason=f"the CUDA plugin is not importable: {PLAN_EXTRA}")),
])
def target(request):
    return request.param, _compile_only(request.param)


def test_flops_on_a_compile_only_target_are_2mnk_per_device(target):
    platform, got = target
    assert got["cost"]["source"] == ("cost_analysis" if platform == "tpu" else "hlo_cost_analysis")
    assert got["cost"]["flops"] == pytest.approx(2 * 512 * 256 * 384 / 4, rel=0.03)
    assert got["cost"]["bytes_accessed"] > 0
    assert got["memory"]["arguments"] == (512 * 256 // 4 + 256 * 384) * 4


def test_collectives_on_a_compile_only_target(target):
    _, got = target
    assert got["data"]["all-reduce"]["count"] >= 1
    assert got["data"]["all-reduce"]["bytes"] in (256 * 128 * 4, 256 * 128 * 2)  # TPU may reduce in bf16
    assert got["fsdp"]["all-gather"]["count"] >= 1 and got["fsdp"]["all-gather"]["bytes"] > 0


def test_a_gradient_sharded_like_its_weight_is_reduce_scattered(target):
    _, got = target
    assert got["scattered"]["reduce-scatter"]["count"] == 1
    assert got["scattered"]["reduce-scatter"]["bytes"] == 256 * 128 * 4 // 4
    assert got["scattered"]["all-reduce"]["count"] == 0


def test_flops_on_a_compile_only_target_count_a_rolled_loop_body_once(target):
    _, got = target
    one_layer = 2 * 16 * 64 * 64
    assert one_layer <= got["layers_unroll_1"] < 2 * one_layer
    assert 4 * one_layer <= got["layers_unroll_True"] < 5 * one_layer


def test_attention_kernel_on_a_compile_only_target(target):
    platform, got = target
    assert got["xla_attention"] == "xla"
    if platform == "gpu":
        assert got["cudnn_attention"] == "cudnn", got.get("cudnn_compiled")
    else:
        assert (got["flash_attention"], got["splash_attention"]) == ("pallas_flash", "pallas_splash")
