"""What pip would install for each platform's command, on each Python: one JAX version or not.

    python benchmarks/install_resolution.py PYTHON [PYTHON ...] > benchmarks/results/install_resolution.md

For every interpreter and every target ('.', '.[cuda12]', '.[cuda13]', '.[tpu]', '.[plan]') it runs
`pip install --dry-run --ignore-installed --report` in the checkout (metadata only: nothing is
downloaded but the wheels' metadata, nothing installed) and tabulates the JAX family's versions.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (".", ".[cuda12]", ".[cuda13]", ".[tpu]", ".[plan]")
SHOWN = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt", "libtpu",
         "flax", "optax", "orbax-checkpoint")


def resolve(python: str, target: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), target], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}


def main(pythons: list[str]) -> None:
    print("# Install resolution: one JAX version per platform command\n")
    print("Each row is `cd CHECKOUT && PYTHON -m pip install --dry-run --ignore-installed --report report.json TARGET`,")
    print(f"made by `python benchmarks/install_resolution.py {' '.join(pythons)}`. `-` means not installed.")
    print("A row is consistent when jax, jaxlib and the plugin (and its PJRT) share one version;")
    print("libtpu's version is the one jax's `tpu` extra pins for that jax.\n")
    print("| Python | target | " + " | ".join(SHOWN) + " | one JAX version |")
    print("|" + " --- |" * (len(SHOWN) + 3))
    for python in pythons:
        version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        for target in TARGETS:
            got = resolve(python, target)
            family = {got[n] for n in SHOWN[:6] if n in got}
            cells = [got.get(n, "-") for n in SHOWN]
            print(f"| {version} | `{target}` | " + " | ".join(cells) + f" | {'yes' if len(family) == 1 else 'NO'} |",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or [sys.executable])
