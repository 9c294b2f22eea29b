"""Where the benchmark tooling sits: gptjax/bench imports the library, never the other way round
(but for the command line's benchmark mode, lazily), no circle inside bench, and no torch in the
package."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gptjax"


def _imports(path: Path):
    """(module imported, whether at the module's top level) for each import in the file."""
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


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_outside_bench_imports_it_but_the_command_lines_benchmark_mode():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        if module.startswith("gptjax.bench"):
            continue
        for name, at_top in _imports(path):
            if name == "gptjax.bench" or name.startswith("gptjax.bench."):
                if module != "gptjax.cli" or at_top:
                    offenders.append((module, name))
    assert not offenders


def test_no_import_circle_inside_bench():
    modules = {_module(p): p for p in (PACKAGE / "bench").glob("*.py")}
    graph = {m: {n for n, _ in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    done, path = set(), []

    def visit(m):
        assert m not in path, " -> ".join([*path[path.index(m):], m])
        if m in done:
            return
        path.append(m)
        for n in graph[m]:
            visit(n)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_no_torch_in_the_package():
    torch = [(_module(p), n) for p in PACKAGE.rglob("*.py") for n, _ in _imports(p) if n.split(".")[0] == "torch"]
    assert not torch
