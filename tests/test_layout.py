"""The packages' imports read one way, catalogue <- spaces <- trainer <- search, and no two
modules import each other, lazily or not (read from the source, so a function-level import
counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("catalogue", "spaces", "trainer", "search")
# What each package may import of the others: the ones before it, except that spaces, a
# declaration of search spaces, needs no trainer (and no torch).
ALLOWED = {"catalogue": set(), "spaces": {"catalogue"}, "trainer": {"catalogue"},
           "search": {"catalogue", "spaces", "trainer"}}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every project module a file imports, at any depth of its code."""
    found = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] in ORDER}


def _modules() -> dict[str, set[str]]:
    modules = {}
    for package in ORDER:
        for path in (ROOT / package).rglob("*.py"):
            modules[_module_name(path)] = _imports(path)
    # keep only names that are modules (``from search import storage`` names one)
    return {name: {m for m in deps if m in modules and m != name}
            for name, deps in modules.items()}


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = sorted(f"{name} imports {dep}" for name, deps in _modules().items()
                   if name.split(".")[0] == package for dep in deps
                   if dep.split(".")[0] not in ALLOWED[package] | {package})
    assert not wrong, wrong


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    cycles = []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            if not _through_own_init(cycle):
                cycles.append(" -> ".join(cycle))
            return
        if name in done:
            return
        done.add(name)
        for dep in sorted(modules.get(name, ())):
            visit(dep, path + [name], done)

    done: set[str] = set()
    for name in sorted(modules):
        visit(name, [], done)
    assert not cycles, cycles


def _through_own_init(cycle: list[str]) -> bool:
    """A package's ``__init__`` and its own submodules: ``search.storage`` re-exporting
    ``search.storage.engine``, which imports ``search.storage.errors``."""
    heads = [m for m in cycle if any(o.startswith(m + ".") for o in cycle)]
    return bool(heads)


def test_spaces_and_catalogue_need_no_torch():
    for package in ("catalogue", "spaces"):
        for path in (ROOT / package).rglob("*.py"):
            roots = {m.split(".")[0] for m in _imports_any(path)}
            assert "torch" not in roots, path.relative_to(ROOT)


def _imports_any(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_the_trainers_exports_are_what_they_name_after_every_submodule_is_loaded():
    """``trainer`` resolves its exports on first use; importing a submodule binds the
    submodule's name on the package, so an export must never share a submodule's name."""
    import importlib
    import pkgutil

    import trainer

    for info in pkgutil.walk_packages(trainer.__path__, "trainer."):
        importlib.import_module(info.name)
    import types

    modules = [name for name in trainer.__all__
               if isinstance(getattr(trainer, name), types.ModuleType)]
    assert not modules, modules


def test_checking_a_dataset_imports_no_torch():
    """A sweep checks its data before Ray starts, and a usage error answers as fast as a
    query: reading a dataset's folder, sizes and fit must not load torch."""
    import subprocess
    import sys

    probe = ("import sys, trainer.datasets as d\n"
             "d.check_dataset('digits', None, ('resnet8', 'mlp'), train_subset=100)\n"
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_study_drivers_load_neither_ray_nor_torch_until_they_run():
    """Every command checks its input before Ray starts: importing what runs a sweep, a
    transfer or a robustness study must not load Ray or torch, so that a usage error answers
    as fast as a query does."""
    import subprocess
    import sys

    probe = ("import sys, search.sweep, search.transfer, search.robustness, search.cli\n"
             "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
