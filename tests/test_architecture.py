"""The package's shape: no import cycles among module-level imports, a core that never imports its opt-in
tooling (wolindex.contrib), benchmarks or tests, and an `import wolindex` that loads no heavy dependency
(Numba kernels, scikit-learn, FAISS, CuPy, ...) before it is used."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wolindex"
CONTRIB = "wolindex.contrib"
# what no core module may import, at any level (inside functions too)
FORBIDDEN_IN_CORE = (CONTRIB, "benchmarks", "tests", "conftest")
# what `import wolindex` must not load; each is imported where it is used
# the command line may run a contrib tool (`wolindex demo`), importing it inside that command only
CONTRIB_INSIDE_FUNCTIONS = ("wolindex.cli",)
HEAVY = ("numba", "sklearn", "faiss", "cupy", "tqdm", "ml_dtypes", "safetensors", "scipy", "threadpoolctl", "torch",
         "transformers")


def modules_of(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the package at root (a package is named by its
    __init__.py)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(node, module level) for every Import / ImportFrom; module level: run when the module is imported
    (not inside a function or class body, nor under `if TYPE_CHECKING:`)."""
    def walk(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from walk(child, False)
            else:
                yield from walk(child, top)
    yield from walk(tree, True)


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, dict[str, bool]]]:
    """(module-level edges among the package's modules, {module: {every module it imports anywhere: whether
    at module level}}).

    Edges are what importing a module runs: `import a.b` and `from a.b import x` run the packages a and a.b
    and, when x is a submodule, a.b.x; a package that encloses the importing module is already being imported
    and adds an edge only when a name is taken from its __init__ (`from . import __version__`)."""
    modules = modules_of(root)
    top_edges: dict[str, set[str]] = {name: set() for name in modules}
    all_imports: dict[str, dict[str, bool]] = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1 + is_package)}
        for node, top in _imports(ast.parse(path.read_text(), str(path))):
            targets = []   # (module run, whether a name is taken from it)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    targets += [(".".join(parts[:i]), False) for i in range(1, len(parts) + 1)]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                parts = source.split(".")
                targets += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
                names = [f"{source}.{alias.name}" for alias in node.names]
                submodules = [n for n in names if n in modules]
                targets += [(n, False) for n in submodules]
                targets.append((source, len(submodules) < len(names)))
            for target, takes_name in targets:
                all_imports[name][target] = all_imports[name].get(target, False) or top
                if top and target in modules and target != name and (takes_name or target not in ancestors):
                    top_edges[name].add(target)
    return top_edges, all_imports


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def core_violations(all_imports: dict[str, dict[str, bool]], contrib: str = CONTRIB,
                    forbidden: tuple[str, ...] = FORBIDDEN_IN_CORE,
                    contrib_inside_functions: tuple[str, ...] = CONTRIB_INSIDE_FUNCTIONS) -> list[str]:
    """'module imports target' for each core module (any but `contrib` and its modules) importing what the
    core must not; the modules of contrib_inside_functions may import contrib inside functions."""
    out = []
    for name, targets in sorted(all_imports.items()):
        if _within(name, [contrib]):
            continue
        for target, top in sorted(targets.items()):
            allowed = name in contrib_inside_functions and not top and _within(target, [contrib])
            if _within(target, forbidden) and not allowed:
                out.append(f"{name} imports {target}")
    return out


def test_no_import_cycles():
    edges, _ = import_graph(PACKAGE)
    assert "wolindex.index" in edges and "wolindex.engine.dispatch" in edges   # the walk found the package
    assert cycles(edges) == []


def test_core_imports_no_contrib_benchmarks_or_tests():
    _, all_imports = import_graph(PACKAGE)
    assert any(name.startswith(CONTRIB + ".") for name in all_imports)
    assert core_violations(all_imports) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_checks_catch_what_they_should(tmp_path):
    """The walker itself: a cycle through a package's __init__ name, a relative cycle between two modules,
    a function-level import of contrib, and the imports that are no cycle."""
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\nfrom .a import f\n",
        "pkg/a.py": "from . import __version__\nfrom .sub import g\n\ndef f():\n    from .contrib import tool\n",
        "pkg/sub/__init__.py": "from .m import g\n",
        "pkg/sub/m.py": "from . import n\nfrom .. import contrib\ng = 1\n",
        "pkg/sub/n.py": "from .m import g\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import x\n",
        "pkg/c.py": "from .b import y\nimport pkg.d\n",
        "pkg/d.py": "def h():\n    from . import c\n",
        "pkg/contrib/__init__.py": "",
        "pkg/contrib/tool.py": "",
        "pkg/cli.py": "import pkg.contrib.tool as t\n\ndef demo():\n    from .contrib import tool\n    import tests\n",
    })
    edges, all_imports = import_graph(pkg)
    assert edges["pkg.a"] == {"pkg", "pkg.sub"}          # __version__ is a name of pkg's __init__
    assert edges["pkg.sub.m"] == {"pkg.sub.n", "pkg.contrib"}
    assert edges["pkg.c"] == {"pkg.b", "pkg.d"} and edges["pkg.b"] == set() and edges["pkg.d"] == set()
    assert sorted(cycles(edges)) == [["pkg", "pkg.a"], ["pkg.sub.m", "pkg.sub.n"]]
    assert core_violations(all_imports, "pkg.contrib", ("pkg.contrib", "tests")) == [
        "pkg.a imports pkg.contrib", "pkg.a imports pkg.contrib.tool", "pkg.cli imports pkg.contrib",
        "pkg.cli imports pkg.contrib.tool", "pkg.cli imports tests", "pkg.sub.m imports pkg.contrib"]
    assert core_violations(all_imports, "pkg.contrib", ("pkg.contrib", "tests"), ("pkg.cli", "pkg.a")) == [
        "pkg.cli imports pkg.contrib", "pkg.cli imports pkg.contrib.tool", "pkg.cli imports tests",
        "pkg.sub.m imports pkg.contrib"]   # pkg.a's is inside a function; pkg.cli's at module level too


@pytest.fixture(scope="module")
def modules_after_import():
    out = subprocess.run([sys.executable, "-c", "import wolindex, sys; print(sorted(sys.modules))"],
                         cwd=PACKAGE.parent, capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in ast.literal_eval(out.strip())}


@pytest.mark.parametrize("module", HEAVY)
def test_import_wolindex_loads_no_heavy_dependency(modules_after_import, module):
    assert module not in modules_after_import, f"`import wolindex` imports {module}; import it where it is used"


MAX_FUNCTION_LINES = 60


def test_no_long_functions():
    """No function in wolindex/ is longer than MAX_FUNCTION_LINES lines unless a comment on its def line
    says why (`# long: <reason>`)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and "# long:" not in lines[node.lineno - 1]:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, long
