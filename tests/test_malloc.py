"""The command line restarts itself, once, under glibc allocator settings on a CPU."""

import json
import os
import subprocess
import sys

import pytest

from gptjax import malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not malloc.wanted({"JAX_PLATFORMS": "cpu"}), reason="needs Linux with glibc")


@pytest.mark.fast
def test_who_is_restarted():
    assert malloc.wanted({"JAX_PLATFORMS": "cpu"})
    assert not malloc.wanted({"JAX_PLATFORMS": "cuda"})
    assert not malloc.wanted({"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": ""})  # the user's choice, even empty
    assert not malloc.wanted({"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})


def _run(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc.SET_BY)}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=60, check=True).stdout.splitlines()


@pytest.mark.fast
def test_restart_once_with_the_tunables_and_the_same_arguments():
    # The command runs twice: first untuned, then, restarted, tuned; the restart returns there.
    code = ("import os, sys; from gptjax import malloc; print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:]); "
            "malloc.restart_tuned(); print('ran', malloc.setting())")
    lines = _run(code, JAX_PLATFORMS="cpu")
    assert lines == ["None []", f"{malloc.TUNABLES} []", f"ran {malloc.TUNABLES!r} (set by gptjax)"]
    # Not restarted: the user chose, or JAX is already running (its threads hold their arenas).
    assert _run(code, JAX_PLATFORMS="cpu", GLIBC_TUNABLES="") == [" []", "ran '' (set by the user)"]
    assert _run("import jax; " + code, JAX_PLATFORMS="cpu")[-1] == "ran glibc defaults"


def test_the_command_line_runs_tuned(tmp_path):
    """python run.py, as a user types it: the benchmark record says who set the allocator."""
    from test_bench_train_step import TINY

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc.SET_BY)}
    argv = [sys.executable, os.path.join(ROOT, "run.py"), "--config=demo", f"--workdir={tmp_path}",
            "--mode=benchmark", "--benchmark_steps=1", "--benchmark_warmup=0", *TINY]
    subprocess.run(argv, env={**env, "JAX_PLATFORMS": "cpu"}, check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "benchmark.json").read_text())
    assert record["glibc_tunables"] == malloc.TUNABLES
    assert record["malloc"] == f"{malloc.TUNABLES!r} (set by gptjax)"
