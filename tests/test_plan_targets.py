"""The plan's targets: names as users say them, the figures, and compile-only devices from libtpu and
the CUDA plugin (those tests are skipped, with the install advice, only where a compiler is missing)."""

import re

import numpy as np
import pytest

from gptjax.bench import flops, targets
from gptjax.errors import ConfigError, SetupError

# CI's newest-JAX tier has the compilers (gptjax[plan]): these run there.
pytestmark = pytest.mark.fast

GiB = 2**30

# name: (devices, hosts), from the Cloud TPU pages' slice tables: v4 and v5p slices are named by
# TensorCores (two a chip, one megacore device), v5e and v6e by chips, 8 to a host.
TPU_COUNTS = {
    "v4-8": (4, 1), "v4-16": (8, 2),
    "v5e-1": (1, 1), "v5e-4": (4, 1), "v5e-8": (8, 1), "v5e-16": (16, 2), "v5e-32": (32, 4),
    "v5e-64": (64, 8), "v5e-128": (128, 16), "v5e-256": (256, 32),
    "v5p-8": (4, 1), "v5p-16": (8, 2),
    "v6e-1": (1, 1), "v6e-4": (4, 1), "v6e-8": (8, 1), "v6e-16": (16, 2),
}
GPU_COUNTS = {f"{gpu}{suffix}": counts for gpu in ("a100", "h100", "h200")
              for suffix, counts in (("", (1, 1)), ("x8", (8, 1)), ("x16", (16, 2)))}


def needs_compiler(target):
    advice = targets.compiler_missing(target)
    if advice:
        pytest.skip(advice)


def test_names_cover_the_targets_users_rent():
    assert targets.names() == [*TPU_COUNTS, *GPU_COUNTS, "cpu"]


@pytest.mark.parametrize("alias, name", [
    ("v5e-8", "v5e-8"), ("V5E-8", "v5e-8"), ("v5litepod-8", "v5e-8"), ("v5litepod-256", "v5e-256"),
    (" v4-16 ", "v4-16"), ("h100", "h100"), ("H100", "h100"), ("h100x1", "h100"), ("h100-x1", "h100"),
    ("h100x8", "h100x8"), ("h100-x8", "h100x8"), ("H200-X16", "h200x16"), ("a100x16", "a100x16"), ("CPU", "cpu"),
])
def test_names_and_aliases(alias, name):
    assert targets.get(alias).name == name


@pytest.mark.parametrize("unknown", ["v5e-3", "v5litepod-9", "h100x4", "b200", "tpu", ""])
def test_an_unknown_name_lists_the_names(unknown):
    with pytest.raises(ConfigError) as error:
        targets.get(unknown)
    message = str(error.value)
    assert f"--target={unknown!r}" in message and "\n" not in message
    assert all(name in message for name in targets.names())


def test_listing_holds_every_target():
    lines = targets.listing().splitlines()
    for name in targets.names():
        (line,) = [line for line in lines if line.split()[0] == name]
        t = targets.get(name)
        assert f" {t.num_devices} " in line and f"{t.memory_bytes / GiB:.2f}" in line
    assert "v5litepod-N = v5e-N" in lines[-1]


@pytest.mark.parametrize("name", TPU_COUNTS)
def test_tpu_target_counts(name):
    t = targets.get(name)
    assert (t.platform, (t.num_devices, t.num_hosts)) == ("tpu", TPU_COUNTS[name])


@pytest.mark.parametrize("name", GPU_COUNTS)
def test_gpu_target_counts(name):
    t = targets.get(name)
    assert (t.platform, (t.num_devices, t.num_hosts)) == ("gpu", GPU_COUNTS[name])


def test_figures_per_device_and_their_sources():
    v5e, v5p, h100, h200 = (targets.get(n) for n in ("v5e-8", "v5p-8", "h100x8", "h200"))
    assert v5e.device_kind == "TPU v5 lite" and v5e.memory_bytes == int(15.75 * GiB)
    assert v5p.device_kind == "TPU v5" and v5p.peak_flops == 459e12
    assert h100.memory_bytes == int(0.75 * 80e9) and h100.link_bandwidth == 900e9
    assert h200.memory_bytes == int(0.75 * 141e9) and h200.memory_bandwidth == 4.8e12
    assert targets.get("v5e-16").host_link_bandwidth == v5e.link_bandwidth  # one slice: ICI between hosts
    for name in targets.names()[:-1]:
        t = targets.get(name)
        assert t.peak_flops == targets.datasheet_peak(t.device_kind)[0] > 0
        assert min(t.memory_bytes, t.memory_bandwidth, t.link_bandwidth, t.host_link_bandwidth) > 0
        assert any(s.startswith("memory") for s in t.sources) and any(s.startswith("peak") for s in t.sources)


def test_flops_reads_the_peaks_from_the_targets_table():
    assert flops.datasheet_peak is targets.datasheet_peak
    assert flops.datasheet_peak("NVIDIA H100 80GB HBM3") == (989.5e12, "NVIDIA H100 SXM data sheet (1,979 TFLOPS sparse / 2)")
    assert flops.datasheet_peak("TPU v5 lite")[0] == 197e12 and flops.datasheet_peak("TPU v5")[0] == 459e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB", "gpu", "bfloat16")[:2] == (312e12, "NVIDIA A100 data sheet (312 TFLOPS dense)")


def test_the_cpu_target_is_the_attached_cpu():
    import jax

    t = targets.get("cpu")
    assert t.num_devices == len(jax.devices("cpu")) and t.memory_bytes > 0
    assert targets.devices(t) == jax.devices("cpu")
    assert targets.compiler_missing(t) is None


def test_gpu_target_config_is_written_from_the_table():
    text = targets.gpu_target_config(targets.get("h200x16"))
    assert "core_count: 132 " in text and "device_memory_size: 141000000000 " in text
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert 'device_description_str: "NVIDIA H200"' in text and 'platform_name: "CUDA"' in text
    a100 = targets.gpu_target_config(targets.get("a100"))
    assert "core_count: 108 " in a100 and "major: 8 minor: 0" in a100 and "shared_memory_per_core: 167936 " in a100
    assert re.search(r"dnn_version_info \{ major: 9 minor: \d+ \}", text)


def test_cudnn_version_follows_the_plugin_wheel(monkeypatch):
    from importlib import metadata

    requirement = 'nvidia-cudnn-cu13<10.0,>=9.14.0.1; sys_platform == "linux" and extra == "with-cuda"'
    monkeypatch.setattr(metadata, "requires", lambda dist: ["nvidia-cublas>=13.0.0.19", requirement])
    assert targets.plugin_cudnn_version() == (9, 14)

    def missing(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(metadata, "requires", missing)
    assert targets.plugin_cudnn_version() == targets.PLUGIN_CUDNN


@pytest.fixture
def uncached_devices():
    """devices() keeps each target's devices: a test that breaks how they are made must not see or leave them."""
    targets._devices.cache_clear()
    yield
    targets._devices.cache_clear()


def test_a_missing_compiler_says_what_to_install(monkeypatch, uncached_devices):
    monkeypatch.setattr(targets, "_importable", lambda module: False)
    tpu, gpu = targets.get("v5e-8"), targets.get("h100")
    assert targets.compiler_missing(tpu).startswith("pip install 'gptjax[plan]' (Python >= 3.12): brings libtpu")
    assert "CUDA plugin" in targets.compiler_missing(gpu)
    with pytest.raises(SetupError, match=r"--target=h100: .*pip install 'gptjax\[plan\]'"):
        targets.devices(gpu)


@pytest.mark.parametrize("name", TPU_COUNTS)
def test_tpu_devices(name):
    t = targets.get(name)
    needs_compiler(t)
    devices = targets.devices(t)
    assert len(devices) == t.num_devices and len({d.process_index for d in devices}) == t.num_hosts
    assert {d.device_kind for d in devices} == {t.device_kind} and devices[0].platform == "tpu"
    assert targets.devices(t) == devices


def _compile_sharded_matmul(t):
    """The compiled HLO of x @ w in bf16 with x's rows split over all the target's devices."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(targets.devices(t)), ("data",))
    x = jax.ShapeDtypeStruct((8 * t.num_devices, 64), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    w = jax.ShapeDtypeStruct((64, 32), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        return jax.jit(lambda a, b: a @ b).lower(x, w).compile().as_text()


# Each device multiplies its own 8 rows: a bf16 [8, 32] product (TPU writes a dot as a convolution).
LOCAL_DOT = re.compile(r"= bf16\[8,32\]\S* (dot|convolution)\(")


@pytest.mark.parametrize("name", GPU_COUNTS)
def test_gpu_devices_compile_a_sharded_bf16_matmul(name):
    t = targets.get(name)
    needs_compiler(t)
    devices = targets.devices(t)
    assert len(devices) == t.num_devices and len({d.process_index for d in devices}) == t.num_hosts
    assert {d.device_kind for d in devices} == {t.device_kind}
    assert LOCAL_DOT.search(_compile_sharded_matmul(t))


def test_a_tpu_target_compiles_a_sharded_bf16_matmul():
    t = targets.get("v5e-8")
    needs_compiler(t)
    assert LOCAL_DOT.search(_compile_sharded_matmul(t))


@pytest.mark.parametrize("name", ["v4-8", "v5e-1", "v5p-8", "v6e-1"])
def test_tpu_memory_is_what_libtpu_says_is_available(name):
    """Compile a program far too large for one chip: libtpu's error states the HBM it may use."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    t = targets.get(name)
    needs_compiler(t)
    mesh = Mesh(np.array(targets.devices(t)[:1]), ("one",))
    huge = jax.ShapeDtypeStruct((2**37,), jnp.float32, sharding=NamedSharding(mesh, P()))
    with pytest.raises(Exception, match="available HBM") as error, jax.set_mesh(mesh):
        jax.jit(lambda a: a * 2 + jnp.sin(a)).lower(huge).compile()
    available = float(re.search(r"available HBM \(([\d.]+)G\)", str(error.value)).group(1))
    assert available == round(t.memory_bytes / GiB, 2)


@pytest.mark.parametrize("gpu, fp32_tflops", [("a100", 19.5), ("h100", 67), ("h200", 67)])
def test_gpu_figures_agree_with_the_data_sheets_fp32_peak(gpu, fp32_tflops):
    """SMs x FP32 cores x 2 FLOPs x boost clock, from the whitepapers, is the data sheet's FP32 peak."""
    model = targets.GPU_MODELS[gpu]
    derived = model.sm_count * model.fp32_cores_per_sm * 2 * model.boost_clock_ghz * 1e9
    assert derived == pytest.approx(fp32_tflops * 1e12, rel=0.01)


def test_a_cuda_plugin_that_did_not_start_says_to_set_jax_platforms(monkeypatch, uncached_devices):
    """Without JAX_PLATFORMS=cpu the plugin looks for a GPU's CUDA libraries, fails, and has no topology."""
    from jax.experimental import topologies

    def not_registered(**kwargs):
        raise NotImplementedError("topology not implemented for cuda")

    t = targets.get("h100x8")
    needs_compiler(t)
    monkeypatch.setattr(topologies, "get_topology_desc", not_registered)
    with pytest.raises(SetupError, match=r"^--target=h100x8: .*run with JAX_PLATFORMS=cpu"):
        targets.devices(t)
