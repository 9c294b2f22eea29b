"""model.attention says what runs: "cudnn" is cuDNN's flash attention or a ConfigError, never XLA's
kernel in its place.

The H100 tests compile for a compile-only H100 (no GPU here) in a child process (this file run as a
script), because deviceless cuDNN compilation needs cuDNN's libraries loaded, and a libcuda.so.1:
where no driver is installed, a stub whose every call fails is built with the C compiler, and it
must not leak into the other tests' process.
"""

import ctypes
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import attention
from gptjax.errors import ConfigError
from gptjax.model import GPT2Config, init_model

# CI's newest-JAX tier has the compilers (gptjax[plan]): these run there.
pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=2)  # head dim 32
H100 = (
    'gpu_device_info { threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152 '
    'shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128 '
    'block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535 '
    'memory_bandwidth: 3350000000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98 '
    'device_memory_size: 85520809984 shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 } '
    'registers_per_core_limit: 65536 registers_per_block_limit: 65536 dnn_version: "DNN_VERSION" }\n'
    'platform_name: "CUDA"\ndevice_description_str: "NVIDIA H100 80GB HBM3"\n'
)
DEVICELESS_CUDNN = {"xla_gpu_cudnn_deviceless_compilation_mode": "CUDNN_DEVICELESS_COMPILATION_ALWAYS"}


def tiny_ids():
    return jnp.asarray(np.arange(64).reshape(2, 32) % 128, jnp.int32)


# --- on this machine's CPU ------------------------------------------------------------------


def test_cudnn_on_a_cpu_is_refused_not_replaced():
    model = init_model(GPT2Config(**TINY, dtype="bfloat16", attention="cudnn"))
    with pytest.raises(ConfigError, match=r"model.attention='cudnn' runs only on an NVIDIA GPU; this program is "
                                          r"built for cpu: set --config.model.attention=xla"):
        model(tiny_ids())


def test_cudnn_training_on_a_cpu_names_the_platform_first():
    model = init_model(GPT2Config(**TINY, dtype="bfloat16", attention="cudnn"))
    with pytest.raises(ConfigError, match="runs only on an NVIDIA GPU"):
        model(tiny_ids(), dropout_key=jax.random.key(0))


@pytest.fixture
def on_a_gpu(monkeypatch):
    monkeypatch.setattr(attention.sharding, "platform", lambda: "gpu")


@pytest.mark.parametrize("dtype, length, rate, training, message", [
    ("float32", 32, 0.0, False, r"needs model.dtype bfloat16 or float16, got float32: "
                                r"set --config.model.dtype=bfloat16 or set --config.model.attention=xla"),
    ("bfloat16", 32, 0.1, True, r"cannot train with dropout on the attention probabilities \(attn_pdrop=0.1\): "
                                r"set --config.model.dropout=0 or set --config.model.attention=xla"),
    ("bfloat16", 33, 0.0, True, r"trains only on even sequence lengths, got 33"),
])
def test_what_cudnn_cannot_run_is_refused_with_what_to_set(on_a_gpu, dtype, length, rate, training, message):
    with pytest.raises(ConfigError, match=message):
        attention.refuse_cudnn_where_it_cannot_run(jnp.dtype(dtype), length, rate, training)


@pytest.mark.parametrize("dtype, length, rate, training", [
    ("bfloat16", 32, 0.0, True), ("float16", 33, 0.1, False), ("bfloat16", 33, 0.0, False),
])
def test_what_cudnn_can_run_passes(on_a_gpu, dtype, length, rate, training):
    attention.refuse_cudnn_where_it_cannot_run(jnp.dtype(dtype), length, rate, training)  # eval ignores dropout


def test_a_refusal_of_jax_own_cudnn_checks_is_a_config_error(on_a_gpu):
    # Head dim 60 is no multiple of 8 (and this machine has no cuDNN): jax refuses, gptjax says so.
    q = jnp.zeros((1, 16, 2, 60), jnp.bfloat16)
    with pytest.raises(ConfigError, match=r"model.attention='cudnn': cuDNN's fused attention refuses this "
                                          r"program \(.+\); set --config.model.attention=xla"):
        attention.cudnn(q, q, q, jnp.full((1,), 16, jnp.int32))


def test_xla_training_with_dropout_writes_attention_out():
    q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 8, 2, 16))
    mask = jnp.tril(jnp.ones((8, 8), bool))[None, None]
    key = jax.random.key(2)
    np.testing.assert_array_equal(attention.attend(q, k, v, mask, None, "xla", 0.1, key),
                                  attention.with_dropout(q, k, v, mask, 0.1, key))
    np.testing.assert_array_equal(attention.attend(q, k, v, mask, None, "xla", 0.1, None),
                                  attention.fused(q, k, v, mask))


# --- on a compile-only H100 (a child process) -----------------------------------------------


def cudnn_wheels_missing() -> str:
    """Why deviceless cuDNN compilation cannot be tried here, or ''."""
    if not any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)):
        return "the CUDA plugin is not installed: pip install 'gptjax[plan]'"
    if not cudnn_libraries():
        return "cuDNN's wheels are not installed: pip install 'gptjax[plan]'"
    if not driver_loadable() and shutil.which("cc") is None:
        return "no libcuda.so.1 and no C compiler to build a stub of it"
    return ""


def cudnn_libraries() -> list[str]:
    """cuDNN, and the cuBLASLt and NVRTC it loads, from NVIDIA's wheels (nvidia/...), in load order."""
    found = []
    for name in ("libcublasLt.so.1[0-9]", "libnvrtc.so.1[0-9]", "libcudnn.so.9"):
        paths = sorted(p for d in sys.path for p in glob.glob(os.path.join(d, "nvidia", "*", "lib", name)))
        if not paths:
            return []
        found.append(paths[0])
    return found


def driver_loadable() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def load_cudnn_for_deviceless_compilation():
    """Loads cuDNN (global, so that XLA's own loading finds it), and a libcuda.so.1: cuDNN's
    runtime-compiled engines, flash attention's, are linked against the driver."""
    if not driver_loadable():
        ctypes.CDLL(driver_stub(cudnn_libraries()[-1]), mode=ctypes.RTLD_GLOBAL)
    for path in cudnn_libraries():
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def driver_stub(cudnn_path: str) -> str:
    names = set()
    for lib in glob.glob(os.path.join(os.path.dirname(cudnn_path), "libcudnn*.so.9")):
        names |= set(re.findall(rb"\x00(cu[A-Z][A-Za-z0-9_]+)\x00", Path(lib).read_bytes()))
    directory = tempfile.mkdtemp(prefix="cuda_stub")
    source = os.path.join(directory, "cuda_stub.c")
    Path(source).write_text("".join(f"int {n.decode()}(void) {{ return 3; }}\n" for n in sorted(names)))
    stub = os.path.join(directory, "libcuda.so.1")
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", stub, source], check=True)
    return stub


def compile_on_h100(case: dict) -> str:
    """The cuDNN custom calls in the compiled program (train: forward and backward), or the ConfigError."""
    from flax import nnx
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jax._src.lib import cuda_versions

    from gptjax.model import abstract_model

    version = cuda_versions.cudnn_get_version()  # e.g. 91501
    target = H100.replace("DNN_VERSION", f"{version // 10000}.{version // 100 % 100}.{version % 100}")
    devices = topologies.get_topology_desc(platform="cuda", target_config=target, topology="1x1x1").devices
    mesh = Mesh(np.asarray(devices).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    config = GPT2Config(**TINY, dtype=case["dtype"], attention=case["attention"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=case["attn_pdrop"])
    graphdef, state = nnx.split(abstract_model(config))
    whole = NamedSharding(mesh, P())
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=whole), state)
    ids = jax.ShapeDtypeStruct((4, case["length"]), jnp.int32, sharding=whole)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=whole)

    def loss(state, ids, key):
        logits = nnx.merge(graphdef, state)(ids, dropout_key=key if case["train"] else None)
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    try:
        with jax.set_mesh(mesh):
            lowered = jax.jit(jax.grad(loss) if case["train"] else loss).lower(state, ids, key)
            text = lowered.compile(compiler_options=DEVICELESS_CUDNN).as_text()
    except ConfigError as e:
        return f"ConfigError: {e}"
    return " ".join(sorted(set(re.findall(r'custom_call_target="(__cudnn\$fmha\w*)"', text))))


CASE = dict(dtype="bfloat16", attention="cudnn", attn_pdrop=0.0, train=False, length=32)
CASES = {
    "eval": CASE,
    "train": {**CASE, "train": True},
    "train_dropout": {**CASE, "train": True, "attn_pdrop": 0.1},
    "eval_float32": {**CASE, "dtype": "float32"},
    "train_odd_length": {**CASE, "train": True, "length": 33},
    "xla": {**CASE, "attention": "xla", "train": True},
}


@pytest.fixture(scope="module")
def on_h100():
    if why := cudnn_wheels_missing():
        pytest.skip(why)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_h100_eval_in_bfloat16_is_cudnn(on_h100):
    assert on_h100["eval"] == "__cudnn$fmhaSoftmax"


def test_h100_training_without_attention_dropout_is_cudnn_forward_and_backward(on_h100):
    assert on_h100["train"] == "__cudnn$fmhaSoftmax __cudnn$fmhaSoftmaxBackward"


def test_h100_training_with_attention_dropout_is_refused(on_h100):
    assert on_h100["train_dropout"].startswith("ConfigError: model.attention='cudnn' cannot train with dropout")
    assert "--config.model.dropout=0" in on_h100["train_dropout"]


def test_h100_float32_is_refused(on_h100):
    assert on_h100["eval_float32"].startswith("ConfigError: model.attention='cudnn' needs model.dtype bfloat16")


def test_h100_training_on_an_odd_length_is_refused(on_h100):
    assert on_h100["train_odd_length"].startswith("ConfigError: model.attention='cudnn' trains only on even")


def test_h100_xla_stays_xla(on_h100):
    assert on_h100["xla"] == ""


if __name__ == "__main__":  # the child process of on_h100
    load_cudnn_for_deviceless_compilation()
    print(json.dumps({name: compile_on_h100(case) for name, case in CASES.items()}))
