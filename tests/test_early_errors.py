"""Every mode reports a misspelled or malformed --config. key, and training a busy workdir, before
the allocator restart (gptjax/malloc.py) and before JAX is imported: in a second, not in 5-13."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptjax import malloc, workdir as wd

ROOT = Path(__file__).resolve().parent.parent


def run_importtime(*args):
    """python -X importtime -m gptjax ARGS, in an environment where the command would restart
    itself; returns (the completed process, the top-level modules each process imported, in
    order: gptjax twice means it restarted)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc.SET_BY)}
    env["JAX_PLATFORMS"] = "cpu"
    if not malloc.wanted(env):
        pytest.skip("no allocator restart on this platform")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gptjax", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \| (\S+)$", done.stderr, re.M)
    return done, imported


@pytest.mark.parametrize("mode", ["eval", "predict", "export", "generate", "benchmark", "train"])
@pytest.mark.parametrize("key, message", [("trian.batch_size=2", "--config.trian.batch_size: unknown key 'trian'"),
                                          ("train.eval_batch_size=many", "not a valid int")])
def test_a_bad_key_is_reported_before_the_restart_and_jax(mode, key, message, tmp_path):
    done, imported = run_importtime(f"--mode={mode}", f"--workdir={tmp_path / 'run'}", "--config=demo",
                                    f"--export_dir={tmp_path / 'e'}", f"--config.{key}")
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert imported.count("gptjax") == 1, "restarted before reporting"
    assert "jax" not in imported and "jaxlib" not in imported
    assert not (tmp_path / "run").exists()


def test_a_busy_workdir_is_refused_before_the_restart_and_jax(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gptjax import workdir as wd\n"
                               f"with wd.lock(wd.path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        done, imported = run_importtime("--config=demo", f"--workdir={tmp_path}")
        assert done.returncode != 0 and "in use by another run" in done.stderr and f'"pid": {holder.pid}' in done.stderr
        assert imported.count("gptjax") == 1 and "jax" not in imported
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_probe_leaves_a_free_lock_free(tmp_path):
    (tmp_path / wd.LOCK_FILE).write_text("{}")
    wd.check_unlocked(wd.path(tmp_path))
    wd.check_unlocked(wd.path(tmp_path / "missing"))
    with wd.lock(wd.path(tmp_path)):  # the probe did not keep it
        pass
