"""The package's shape, read from its source (nothing is imported): no import circle, the library
apart from its benchmark tooling (gptjax/bench imports the library, never the other way round, but
for the command line's benchmark mode, lazily), small modules, and no torch."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gptjax"
MAX_LINES = 500


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path):
    """(module imported, whether at the module's top level) for each import in the file; lazy
    imports inside functions count too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], base]).strip(".")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            yield name, id(node) in top


GRAPH = {m: {n for n, _ in _imports(p) if n in MODULES and n not in (m, "gptjax")} for m, p in MODULES.items()}


def test_no_import_circle():
    done, path = set(), []

    def visit(m):
        assert m not in path, "import circle: " + " -> ".join([*path[path.index(m):], m])
        if m in done:
            return
        path.append(m)
        for n in sorted(GRAPH[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in GRAPH:
        visit(m)


def test_nothing_outside_bench_imports_it_but_the_command_lines_benchmark_mode():
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("gptjax.bench"):
            continue
        for name, at_top in _imports(path):
            if name == "gptjax.bench" or name.startswith("gptjax.bench."):
                if module != "gptjax.cli" or at_top:
                    offenders.append((module, name))
    assert not offenders


def test_modules_are_small():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert not {m: n for m, n in sizes.items() if n > MAX_LINES}


def test_no_torch_in_the_package():
    # torch is a test-only dependency: the PyTorch side of the benchmarks lives in benchmarks/.
    torch = [(m, n) for m, p in MODULES.items() for n, _ in _imports(p) if n.split(".")[0] == "torch"]
    assert not torch


def test_the_public_api_resolves_lazily_and_help_names_it():
    import subprocess
    import sys

    code = ("import sys, pydoc, gptjax\n"
            "assert 'jax' not in sys.modules, 'import gptjax imported jax'\n"
            "text = pydoc.render_doc(gptjax, renderer=pydoc.plaintext)\n"
            "missing = [n for n in gptjax.__all__ if n not in text]\n"
            "assert not missing, missing\n"
            "assert all(callable(getattr(gptjax, n)) or n in ('HEADS', 'SIZES') for n in gptjax.__all__)\n"
            "assert set(gptjax.__all__) <= set(dir(gptjax)) and gptjax.__version__\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
