"""The accelerators a plan compiles for, named as users rent them ("v5e-8", "h100x8"), with the
figures a plan weighs a program against, and their compile-only jax devices.

Every figure is per device (a TPU v4 or v5p device is a megacore chip) and comes from a vendor's
published page, named in Target.sources. Link bandwidths are bidirectional totals, as NVIDIA
states NVLink and Google states ICI, so that every target counts the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re

GB = 10**9
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    name: str                 # canonical, as users say it: "v5e-8", "h100x8", "cpu"
    platform: str             # "tpu", "gpu" or "cpu"
    device_kind: str          # what jax reports on that hardware
    num_devices: int          # jax devices (TPU v4/v5p: megacore chips, so v4-8 has 4)
    num_hosts: int
    memory_bytes: int         # per device, what XLA may use
    peak_flops: float         # dense bf16 FLOP/s per device; 0.0 where not known ahead (cpu)
    memory_bandwidth: float   # HBM bytes/s per device; 0.0 where not known (cpu)
    link_bandwidth: float     # bytes/s per device for collectives within a host (ICI or NVLink)
    host_link_bandwidth: float  # bytes/s per device between hosts (ICI within a TPU slice, InfiniBand)
    sources: tuple[str, ...]  # where each figure comes from


# Dense (not 2:4 sparse) bf16 matrix peak per device, from the vendors' data sheets: the one table
# that both the targets and flops.datasheet_peak (MFU of measured runs) read. NVIDIA's sheets print
# the sparse figure with a footnote; dense is half of it. Matched against jax's device_kind (lower
# case), first match wins, so the longer names come first.
PEAK_BF16_FLOPS = [
    # NVIDIA H200 data sheet, "BF16 Tensor Core": H200 SXM 1,979 TFLOPS, H200 NVL 1,671 (sparse).
    # https://www.nvidia.com/en-us/data-center/h200/
    ("h200 nvl", 835.5e12, "NVIDIA H200 NVL data sheet (1,671 TFLOPS sparse / 2)"),
    ("h200", 989.5e12, "NVIDIA H200 SXM data sheet (1,979 TFLOPS sparse / 2)"),
    # NVIDIA H100 data sheet, "BF16 Tensor Core": SXM 1,979, PCIe 1,513, NVL 1,671 TFLOPS (sparse).
    # https://www.nvidia.com/en-us/data-center/h100/
    ("h100 pcie", 756.5e12, "NVIDIA H100 PCIe data sheet (1,513 TFLOPS sparse / 2)"),
    ("h100 nvl", 835.5e12, "NVIDIA H100 NVL data sheet (1,671 TFLOPS sparse / 2)"),
    ("h100", 989.5e12, "NVIDIA H100 SXM data sheet (1,979 TFLOPS sparse / 2)"),
    # NVIDIA A100 data sheet, "BF16 Tensor Core": 312 TFLOPS (624 sparse), SXM and PCIe alike.
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    ("a100", 312e12, "NVIDIA A100 data sheet (312 TFLOPS dense)"),
    # Google Cloud TPU system architecture pages, "Peak compute per chip (bf16)".
    # https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e
    ("tpu v4", 275e12, "Cloud TPU v4 docs (275 TFLOPS bf16 per chip)"),
    ("tpu v5 lite", 197e12, "Cloud TPU v5e docs (197 TFLOPS bf16 per chip)"),
    ("tpu v5e", 197e12, "Cloud TPU v5e docs (197 TFLOPS bf16 per chip)"),
    ("tpu v5p", 459e12, "Cloud TPU v5p docs (459 TFLOPS bf16 per chip)"),
    ("tpu v5", 459e12, "Cloud TPU v5p docs (459 TFLOPS bf16 per chip)"),  # v5p's device_kind is "TPU v5"
    ("tpu v6 lite", 918e12, "Cloud TPU v6e docs (918 TFLOPS bf16 per chip)"),
    ("tpu v6e", 918e12, "Cloud TPU v6e docs (918 TFLOPS bf16 per chip)"),
]


def datasheet_peak(device_kind: str) -> tuple[float, str] | None:
    kind = device_kind.lower()
    for name, flops, source in PEAK_BF16_FLOPS:
        if name in kind:
            return flops, source
    return None


@dataclasses.dataclass(frozen=True)
class TpuChip:
    libtpu_name: str          # the generation as libtpu's topology names spell it
    chip_config: str          # "megacore": a v4/v5p chip's two cores are one device
    device_kind: str
    memory_bytes: int
    memory_bandwidth: float
    ici_bandwidth: float
    sources: tuple[str, ...]


# Memory: what libtpu's compiler says is available, read from its error when a compile-only
# program does not fit ("exceeds available HBM (15.75G)", in GiB, rounded to 0.01): a little under
# the data sheet's, the rest being reserved. Bandwidths: Cloud TPU system architecture pages.
# A slice's hosts are joined by ICI like its chips: the data-center network only joins slices,
# and no target here spans two, so a TPU's host link is its ICI.
TPU_CHIPS = {
    "v4": TpuChip("v4", "megacore", "TPU v4", int(30.75 * GiB), 1200 * GB, 2 * 1.1e15 / 4096, (
        "memory: libtpu's compiler, 'available HBM (30.75G)' (Cloud TPU v4 docs: 32 GiB)",
        "HBM bandwidth: Cloud TPU v4 docs (1200 GBps)",
        "ICI: Cloud TPU v4 docs give no per-chip figure; twice the pod's all-reduce bandwidth per chip "
        "(1.1 PB/s / 4096 chips), the ratio that holds on v5e and v6e between that and their per-chip ICI")),
    "v5e": TpuChip("v5e", "default", "TPU v5 lite", int(15.75 * GiB), 819 * GB, 400 * GB, (
        "memory: libtpu's compiler, 'available HBM (15.75G)' (Cloud TPU v5e docs: 16 GB)",
        "HBM bandwidth: Cloud TPU v5e docs (819 GBps)",
        "ICI: Cloud TPU v5e docs (400 GBps bidirectional per chip)")),
    "v5p": TpuChip("v5p", "megacore", "TPU v5", int(95.73 * GiB), 2765 * GB, 1200 * GB, (
        "memory: libtpu's compiler, 'available HBM (95.73G)' (Cloud TPU v5p docs: 95 GiB)",
        "HBM bandwidth: Cloud TPU v5p docs (2765 GBps)",
        "ICI: Cloud TPU v5p docs (1200 GBps bidirectional per chip)")),
    "v6e": TpuChip("v6e", "default", "TPU v6 lite", int(31.24 * GiB), 1640 * GB, 800 * GB, (
        "memory: libtpu's compiler, 'available HBM (31.24G)' (Cloud TPU v6e docs: 32 GB)",
        "HBM bandwidth: Cloud TPU v6e docs (1640 GBps)",
        "ICI: Cloud TPU v6e docs (800 GBps bidirectional per chip)")),
}

# name: (chip, libtpu topology, chips per host). Cloud TPU names v4 and v5p slices by TensorCores
# (two a chip) and v5e and v6e slices by chips. Hosts hold 4 chips (v4, v5p) or 8 (v5e, v6e); the
# 1- and 4-chip v5e and v6e slices are a part of one host. Topologies: the slice shape tables of
# the Cloud TPU v4, v5e, v5p and v6e pages.
TPU_SLICES = {
    "v4-8": ("v4", "2x2x1", (2, 2, 1)),
    "v4-16": ("v4", "2x2x2", (2, 2, 1)),
    **{f"v5e-{n}": ("v5e", shape, host) for n, shape, host in (
        (1, "1x1", (1, 1, 1)), (4, "2x2", (2, 2, 1)), (8, "2x4", (2, 4, 1)), (16, "4x4", (2, 4, 1)),
        (32, "4x8", (2, 4, 1)), (64, "8x8", (2, 4, 1)), (128, "8x16", (2, 4, 1)), (256, "16x16", (2, 4, 1)))},
    "v5p-8": ("v5p", "2x2x1", (2, 2, 1)),
    "v5p-16": ("v5p", "2x2x2", (2, 2, 1)),
    **{f"v6e-{n}": ("v6e", shape, host) for n, shape, host in (
        (1, "1x1", (1, 1, 1)), (4, "2x2", (2, 2, 1)), (8, "2x4", (2, 4, 1)), (16, "4x4", (2, 4, 1)))},
}


def _tpu_target(name: str) -> Target:
    chip_name, shape, host = TPU_SLICES[name]
    chip = TPU_CHIPS[chip_name]
    chips = math.prod(int(n) for n in shape.split("x"))
    return Target(
        name=name, platform="tpu", device_kind=chip.device_kind, num_devices=chips,
        num_hosts=max(1, chips // math.prod(host)), memory_bytes=chip.memory_bytes,
        peak_flops=datasheet_peak(chip.device_kind)[0], memory_bandwidth=chip.memory_bandwidth,
        link_bandwidth=chip.ici_bandwidth, host_link_bandwidth=chip.ici_bandwidth,
        sources=(f"peak: {datasheet_peak(chip.device_kind)[1]}", *chip.sources,
                 f"topology: Cloud TPU {chip_name} docs, {shape} slice"))


@dataclasses.dataclass(frozen=True)
class GpuModel:
    device_kind: str          # what jax reports: the CUDA device name
    compute_capability: tuple[int, int]
    sm_count: int
    boost_clock_ghz: float
    fp32_cores_per_sm: int
    l2_cache_bytes: int
    memory_bytes: int         # the data sheet's, as the compiler is told
    memory_bandwidth: float
    nvlink_bandwidth: float
    infiniband_bandwidth: float
    sources: tuple[str, ...]


# SM count, boost clock, FP32 cores per SM and L2: NVIDIA's architecture whitepapers (A100:
# "NVIDIA A100 Tensor Core GPU Architecture"; H100 and H200, the same GH100 die: "NVIDIA H100
# Tensor Core GPU Architecture", H100 SXM5 column, with the 1.98 GHz boost of NVIDIA's final H100
# SXM5 specifications). SMs x cores x 2 x clock gives the data sheets' FP32 peak (19.5 and 67
# TFLOPS), which the tests check. Memory, bandwidth and NVLink: the data sheets.
# Between hosts: the DGX A100 / H100 / H200 data sheets' one compute-fabric InfiniBand port per
# GPU (200 and 400 Gb/s), counted both ways like NVLink.
GPU_MODELS = {
    "a100": GpuModel("NVIDIA A100-SXM4-80GB", (8, 0), 108, 1.41, 64, 40 * 2**20, 80 * GB, 2039 * GB, 600 * GB,
                     2 * 200e9 / 8, (
                         "SMs 108, boost 1410 MHz, 64 FP32 cores/SM, L2 40 MB: NVIDIA A100 architecture whitepaper",
                         "memory 80 GB, 2,039 GB/s, NVLink 600 GB/s: NVIDIA A100 data sheet (SXM 80GB)",
                         "between hosts: DGX A100 data sheet, one 200 Gb/s InfiniBand port per GPU")),
    "h100": GpuModel("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 128, 50 * 2**20, 80 * GB, 3350 * GB, 900 * GB,
                     2 * 400e9 / 8, (
                         "SMs 132, 128 FP32 cores/SM, L2 50 MB: NVIDIA H100 architecture whitepaper (SXM5); boost 1980 MHz: "
                         "NVIDIA's H100 SXM5 specifications",
                         "memory 80 GB, 3.35 TB/s, NVLink 900 GB/s: NVIDIA H100 data sheet (SXM)",
                         "between hosts: DGX H100 data sheet, one 400 Gb/s InfiniBand port per GPU")),
    "h200": GpuModel("NVIDIA H200", (9, 0), 132, 1.98, 128, 50 * 2**20, 141 * GB, 4800 * GB, 900 * GB,
                     2 * 400e9 / 8, (
                         "SMs, clock, cores, L2: the H100 SXM5's (the same GH100 die), NVIDIA H100 architecture whitepaper",
                         "memory 141 GB, 4.8 TB/s, NVLink 900 GB/s: NVIDIA H200 data sheet (SXM)",
                         "between hosts: DGX H200 data sheet, one 400 Gb/s InfiniBand port per GPU")),
}

# Per-SM and per-block limits by compute capability: the CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability" (shared memory in KB of 1024 bytes).
CUDA_LIMITS = {
    (8, 0): dict(threads_per_block=1024, threads_per_warp=32, threads_per_sm=2048, shared_per_block=48 * 1024,
                 shared_per_block_optin=163 * 1024, shared_per_sm=164 * 1024, registers_per_sm=64 * 1024,
                 registers_per_block=64 * 1024),
    (9, 0): dict(threads_per_block=1024, threads_per_warp=32, threads_per_sm=2048, shared_per_block=48 * 1024,
                 shared_per_block_optin=227 * 1024, shared_per_sm=228 * 1024, registers_per_sm=64 * 1024,
                 registers_per_block=64 * 1024),
}

# jax's GPU client takes this share of a GPU's memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION):
# a run started as gptjax starts it may use no more.
JAX_GPU_MEMORY_FRACTION = 0.75

GPU_COUNTS = {"": (1, 1), "x8": (8, 1), "x16": (16, 2)}  # suffix: (devices, hosts)


def _gpu_target(name: str) -> Target:
    base, suffix = re.fullmatch(r"([a-z]\d+)(x\d+)?", name).groups()
    model = GPU_MODELS[base]
    devices, hosts = GPU_COUNTS[suffix or ""]
    peak, peak_source = datasheet_peak(model.device_kind)
    return Target(
        name=name, platform="gpu", device_kind=model.device_kind, num_devices=devices, num_hosts=hosts,
        memory_bytes=int(model.memory_bytes * JAX_GPU_MEMORY_FRACTION), peak_flops=peak,
        memory_bandwidth=model.memory_bandwidth, link_bandwidth=model.nvlink_bandwidth,
        host_link_bandwidth=model.infiniband_bandwidth,
        sources=(f"peak: {peak_source}", *model.sources,
                 f"usable memory: jax's default {JAX_GPU_MEMORY_FRACTION:.0%} of it "
                 "(XLA_PYTHON_CLIENT_MEM_FRACTION)",
                 "per-SM limits: CUDA C++ Programming Guide, Technical Specifications per Compute Capability"))


def _host_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_target() -> Target:
    import jax

    count = len(jax.devices("cpu"))
    return Target(
        name="cpu", platform="cpu", device_kind="cpu", num_devices=count, num_hosts=1,
        memory_bytes=_host_ram() // count, peak_flops=0.0, memory_bandwidth=0.0, link_bandwidth=0.0,
        host_link_bandwidth=0.0,
        sources=("memory: this host's RAM (os.sysconf), shared by its jax CPU devices",
                 "peak: not known ahead; benchmark mode measures it (flops.peak_probe)"))


GPU_NAMES = [f"{base}{suffix}" for base in GPU_MODELS for suffix in GPU_COUNTS]


def names() -> list[str]:
    return [*TPU_SLICES, *GPU_NAMES, "cpu"]


def canonical(name: str) -> str | None:
    """The canonical spelling of a target's name or alias, or None: Cloud TPU's own "v5litepod-8"
    for "v5e-8", and "h100-x8", "h100x1" for "h100x8", "h100"."""
    text = name.strip().lower()
    text = re.sub(r"^v5litepod-", "v5e-", text)
    gpu = re.fullmatch(r"([a-z]\d+)-?x(\d+)", text)
    if gpu:
        text = gpu.group(1) + ("" if gpu.group(2) == "1" else f"x{gpu.group(2)}")
    return text if text in names() else None


def get(name: str) -> Target:
    from gptjax.errors import ConfigError

    found = canonical(name)
    if found is None:
        raise ConfigError(f"--target={name!r} is not a known target: one of {', '.join(names())}")
    if found in TPU_SLICES:
        return _tpu_target(found)
    if found == "cpu":
        return _cpu_target()
    return _gpu_target(found)


def _line(t: Target) -> str:
    def rate(x: float, unit: float) -> str:
        return f"{x / unit:,.0f}" if x else "-"

    return (f"{t.name:<10} {t.platform:<4} {t.device_kind:<22} {t.num_devices:>7} {t.num_hosts:>5} "
            f"{t.memory_bytes / GiB:>9.2f} {rate(t.peak_flops, 1e12):>10} {rate(t.memory_bandwidth, GB):>9} "
            f"{rate(t.link_bandwidth, GB):>8} {rate(t.host_link_bandwidth, GB):>9}")


def listing() -> str:
    """The text `--target=list` prints: one line per target, per-device figures."""
    header = (f"{'target':<10} {'':<4} {'device kind':<22} {'devices':>7} {'hosts':>5} {'mem GiB':>9} "
              f"{'bf16 TF/s':>10} {'HBM GB/s':>9} {'link GB/s':>8} {'host GB/s':>9}")
    notes = ("Per device. Memory is what XLA may use: libtpu's stated HBM on TPUs, jax's default "
             f"{JAX_GPU_MEMORY_FRACTION:.0%} of the data sheet's on GPUs. Links are bidirectional (ICI, NVLink; "
             "between hosts ICI on TPUs, InfiniBand on GPUs). Aliases: v5litepod-N = v5e-N, h100-x8 = h100x8.")
    return "\n".join([header, *(_line(get(n)) for n in names()), notes])


def gpu_target_config(target: Target) -> str:
    """The GpuTargetConfigProto text XLA's GPU compiler takes for a device it cannot see, written
    from the vendors' figures above."""
    base = re.fullmatch(r"([a-z]\d+)(x\d+)?", target.name).group(1)
    model = GPU_MODELS[base]
    limits = CUDA_LIMITS[model.compute_capability]
    major, minor = model.compute_capability
    dnn_major, dnn_minor = plugin_cudnn_version()
    info = {
        "threads_per_block_limit": limits["threads_per_block"],
        "threads_per_warp": limits["threads_per_warp"],
        "shared_memory_per_block": limits["shared_per_block"],
        "shared_memory_per_core": limits["shared_per_sm"],
        "threads_per_core_limit": limits["threads_per_sm"],
        "core_count": model.sm_count,
        "fpus_per_core": model.fp32_cores_per_sm,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(model.memory_bandwidth),
        "l2_cache_size": model.l2_cache_bytes,
        "clock_rate_ghz": model.boost_clock_ghz,
        "device_memory_size": model.memory_bytes,
        "shared_memory_per_block_optin": limits["shared_per_block_optin"],
        "registers_per_core_limit": limits["registers_per_sm"],
        "registers_per_block_limit": limits["registers_per_block"],
    }
    fields = " ".join(f"{k}: {v}" for k, v in info.items())
    return (f"gpu_device_info {{ {fields} cuda_compute_capability {{ major: {major} minor: {minor} }} }}\n"
            'platform_name: "CUDA"\n'
            f"dnn_version_info {{ major: {dnn_major} minor: {dnn_minor} }}\n"
            f'device_description_str: "{model.device_kind}"\n')


# The cuDNN the CUDA plugin wheels of jax 0.12 require (nvidia-cudnn >= 9.12, < 10): XLA decides
# from this version which fused attention cuDNN can run, so it is the one the run would load.
PLUGIN_CUDNN = (9, 12)


def plugin_cudnn_version() -> tuple[int, int]:
    """The cuDNN version the installed CUDA plugin wheel asks for (its lower bound), else PLUGIN_CUDNN."""
    from importlib import metadata

    for dist in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            found = re.match(r"nvidia-cudnn\S*\s*[^;]*?>=\s*(\d+)\.(\d+)", requirement)
            if found:
                return int(found.group(1)), int(found.group(2))
    return PLUGIN_CUDNN


TPU_ADVICE = ("pip install 'gptjax[plan]' (Python >= 3.12): brings libtpu, the TPU compiler, "
              "to compile for a TPU that is not attached")
GPU_ADVICE = ("pip install 'gptjax[plan]' (Python >= 3.12): brings jax's CUDA plugin, the GPU compiler, "
              "to compile for a GPU that is not attached (run with JAX_PLATFORMS=cpu)")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def compiler_missing(target: Target) -> str | None:
    """None when the target's compiler is importable here, else the one-line install advice."""
    if target.platform == "tpu":
        return None if _importable("libtpu") else TPU_ADVICE
    if target.platform == "gpu":
        plugins = ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")
        return None if any(_importable(p) for p in plugins) else GPU_ADVICE
    return None


def devices(target: Target) -> list:
    """The target's compile-only jax devices (the attached ones for "cpu"); the same objects on
    every call, so meshes built from them compare equal."""
    return list(_devices(target.name))


@functools.lru_cache(maxsize=None)
def _devices(name: str) -> tuple:
    import jax

    target = get(name)
    if target.platform == "cpu":
        return tuple(jax.devices("cpu"))
    from gptjax.errors import SetupError

    advice = compiler_missing(target)
    if advice:
        raise SetupError(f"--target={name}: its compiler is not installed: {advice}")
    from jax.experimental import topologies

    if target.platform == "tpu":
        chip_name, shape, host = TPU_SLICES[name]
        chip = TPU_CHIPS[chip_name]
        topology = topologies.get_topology_desc(
            topology_name=f"{chip.libtpu_name}:{shape}", platform="tpu", chip_config_name=chip.chip_config,
            chips_per_host_bounds=host, num_slices=1)
    else:
        per_host = target.num_devices // target.num_hosts
        try:
            topology = topologies.get_topology_desc(
                platform="cuda", target_config=gpu_target_config(target),
                topology=f"1x{target.num_hosts}x{per_host}")
        except NotImplementedError as e:
            # Unless JAX_PLATFORMS leaves CUDA out, the plugin first checks the CUDA libraries of a
            # GPU this machine does not have, fails, and never registers its compile-only topologies.
            raise SetupError(f"--target={name}: jax's CUDA plugin did not start ({e}): run with "
                             "JAX_PLATFORMS=cpu to compile for a GPU that is not attached") from None
    return tuple(topology.devices)
