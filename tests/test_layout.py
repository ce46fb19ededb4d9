"""The package's floors, read from its own imports: foundations at the bottom, then the models
and math of the chapters, then the recipes that run them, then the checkers and the commands.
An import may go down or sideways, never up; there is no circle; and no module of mmcourse is
imported from inside a function (a hidden import is how a circle or an upward arrow hides).

See docs/ARCHITECTURE.md for the picture."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmcourse"

FOUNDATIONS = {
    "_validate",
    "env",
    "checkpoints",
    "distributed",
    "trainer",
    "viz",
    "data",
    "kernels",
}
TOP = {"checks", "train", "grade", "student", "lab"}
FLOORS = {"foundations": 0, "models": 1, "recipes": 2, "top": 3}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> str:
    first = module.split(".")[1] if "." in module else ""
    if module == "mmcourse" or first in FOUNDATIONS:
        return "foundations"
    if first == "recipes":
        return "recipes"
    if first in TOP:
        return "top"
    return "models"


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported mmcourse module, inside a function?, line) for every import of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("mmcourse"):
                    for alias in child.names:  # `from mmcourse import vq` imports a module
                        sub = f"{child.module}.{alias.name}"
                        is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py")
                        package = PACKAGE.parent / sub.replace(".", "/") / "__init__.py"
                        name = sub if is_module.exists() or package.exists() else child.module
                        found.append((name, inner, child.lineno))
            elif isinstance(child, ast.Import):
                found.extend((a.name, inner, child.lineno) for a in child.names
                             if a.name.startswith("mmcourse"))  # fmt: skip
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: {name for name, _, _ in _imports(p)} - {m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_or_sideways(module):
    up = [f"{module} ({_floor(module)}) imports {target} ({_floor(target)})"
          for target in GRAPH[module]
          if FLOORS[_floor(target)] > FLOORS[_floor(module)]]  # fmt: skip
    assert not up, "\n".join(up)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_package_import_hides_inside_a_function(module):
    hidden = [f"{module}:{line} imports {name} inside a function"
              for name, inner, line in _imports(MODULES[module]) if inner]  # fmt: skip
    assert not hidden, "\n".join(sorted(set(hidden)))


def test_no_import_circle():
    # A package's __init__ importing its own modules is how a package shows its face, not a
    # circle; every other cycle is.
    def edges(m: str) -> set[str]:
        return {t for t in GRAPH[m] if t in GRAPH and not m.startswith(t + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import circle: " + " → ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
