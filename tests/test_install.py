"""Installed, not checked out: the wheel, its named configs, the gptjax command and python -m gptjax."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ["--config=demo", "--config.train.max_steps=2", "--config.train.num_epochs=1",
        "--config.data.synthetic_sizes=(64, 16, 16)", "--config.model.arch.n_layer=1"]
TORCH = {"torch", "torchgen", "functorch"}  # what the torch wheel puts in site-packages


def sh(*command, **kwargs):
    out = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{command}: {out.stderr}"
    return out


def test_platform_extras_pin_jax_in_the_supported_range():
    """One install command per platform: each extra asks for jax[platform] in gptjax's own jax range."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (jax_range,) = [re.sub(r"^jax", "", d) for d in project["dependencies"] if re.match(r"jax\W", d)]
    extras = project["optional-dependencies"]
    for platform in ("cuda12", "cuda13", "tpu"):
        # An accelerator VM runs the hub configs (ner, sst2, lm): its one command brings datasets too.
        assert extras[platform] == [f"jax[{platform}]{jax_range}", "gptjax[hub]"], platform


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel as `pip wheel` builds it, from a copy of what the build reads (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    shutil.copytree(ROOT / "gptjax", source / "gptjax", ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: the installed setuptools builds it, with no download.
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp / "dist", source)
    (path,) = (tmp / "dist").glob("gptjax-*.whl")
    return path


@pytest.mark.fast
def test_wheel_ships_the_named_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"gptjax/configs/{n}.py" for n in ("demo", "ner", "sst2")} <= names
    assert any(n.endswith("entry_points.txt") for n in names)


@pytest.mark.fast
def test_installed_wheel_runs_the_demo_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    venv_site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # The dependencies are those of the running interpreter, reused so the test stays fast (no
    # download): a .pth adds its site-packages after the venv's own. (--system-site-packages would
    # give the base interpreter's, not those of a venv the tests run in, as CI's fast tier does.)
    # Less torch, as on a GPU or TPU VM: gptjax must run without it, and transformers is noisy then.
    parents = []
    for parent in dict.fromkeys(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))):
        if Path(parent).is_dir():
            parents.append(tmp_path / f"parent{len(parents)}")
            parents[-1].mkdir()
            for entry in Path(parent).iterdir():
                if re.split(r"[-_.]", entry.name)[0] not in TORCH:
                    (parents[-1] / entry.name).symlink_to(entry)
    (venv_site / "_parent_site.pth").write_text("".join(f"{p}\n" for p in parents))
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    probe = ("import importlib.util, gptjax; from gptjax.config import load_config; load_config('demo'); "
             "print(gptjax.__file__, importlib.util.find_spec('torch') is None)")
    package, no_torch = sh(python, "-c", probe, cwd=outside, env=env).stdout.split()
    assert Path(package).is_relative_to(venv_site), package  # the wheel's gptjax, not the checkout's
    assert no_torch == "True"
    for command, workdir in (([venv / "bin" / "gptjax"], "console"), ([python, "-m", "gptjax"], "module")):
        stderr = sh(*command, *DEMO, f"--workdir={outside / workdir}", cwd=outside, env=env).stderr
        assert (outside / workdir / "results.json").is_file() and (outside / workdir / "export" / "config.json").is_file()
        # The first lines a user sees: no advice from transformers about the PyTorch it does not need.
        assert "PyTorch was not found" not in stderr and "[transformers]" not in stderr, stderr
