"""The code's shape rules from STYLE.md, enforced: sizes, no globals, no module-level mutables."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import estuary

SRC = Path(estuary.__file__).parent
MAX_FILE_LINES = 800
MAX_FUNCTION_LINES = 100
FILES = sorted(SRC.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_modules_are_small(path: Path) -> None:
    """No module reaches 800 lines."""
    assert len(path.read_text(encoding="utf-8").splitlines()) < MAX_FILE_LINES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_functions_are_small_and_nothing_is_global(path: Path) -> None:
    """No function reaches 100 lines; no `global` statement anywhere."""
    for node in ast.walk(_tree(path)):
        assert not isinstance(node, ast.Global), f"{path}:{node.lineno} uses global"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length < MAX_FUNCTION_LINES, (
                f"{path}:{node.lineno} {node.name} is {length} lines"
            )


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_level_mutable_state(path: Path) -> None:
    """Module-level values are constants: no list, dict or set displays or constructors."""
    mutable_calls = {"list", "dict", "set", "defaultdict", "deque", "OrderedDict", "Counter"}
    for node in _tree(path).body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if value is None:
            continue
        names = [
            t.id
            for t in getattr(node, "targets", [getattr(node, "target", None)])
            if isinstance(t, ast.Name)
        ]
        if names == ["__all__"]:
            continue
        is_display = isinstance(
            value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp
        )
        is_call = isinstance(value, ast.Call) and getattr(value.func, "id", None) in mutable_calls
        assert not is_display, f"{path}:{node.lineno} module-level mutable {names}"
        assert not is_call, f"{path}:{node.lineno} module-level mutable {names}"


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(estuary.__path__, prefix="estuary."):
        if (
            not any(part.startswith("_") for part in info.name.split("."))
            and info.name != "estuary.__main__"
        ):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_public_modules_declare_their_surface(name: str) -> None:
    """Every public module has a docstring and an `__all__` naming only what it defines."""
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert all(hasattr(module, symbol) for symbol in exported)
