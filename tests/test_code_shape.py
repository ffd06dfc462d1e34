"""The code's shape, kept: no module over 400 lines, and no import inside a function that
hides an import cycle (a module imported lazily may not import its importer back, at its top
or lazily in turn)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {  # pyproject.toml's package-dir
    "brainscan": ROOT / "brainscan",
    "brainscan.train": ROOT / "train",
    "brainscan.export": ROOT / "export",
    "brainscan.client": ROOT / "client",
    "brainscan.benchmarks": ROOT / "benchmarks",
}
MAX_LINES = 400


def _python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [ROOT / p for p in listed] or list(ROOT.glob("*/**/*.py"))


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _python_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def _module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGES.items(), key=lambda item: -len(str(item[1]))):
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            return ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
    raise AssertionError(path)


def test_no_import_inside_a_function_hides_a_cycle():
    modules = {
        _module_name(p): p
        for folder in PACKAGES.values()
        for p in folder.rglob("*.py")
        if "triton_models" not in p.parts  # the python models run inside Triton, not in the package
    }
    top: dict[str, set[str]] = {}
    inner: dict[str, list[tuple[int, str]]] = {}
    for name, path in modules.items():
        top[name], inner[name] = set(), []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainscan"):
                targets = {node.module, *(f"{node.module}.{a.name}" for a in node.names)} & modules.keys()
                if node.col_offset == 0:
                    top[name] |= targets
                else:
                    inner[name] += [(node.lineno, t) for t in targets]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo += top.get(current, set()) | {t for _, t in inner.get(current, [])}
        return False

    hidden = [
        f"{modules[name].relative_to(ROOT)}:{line} imports {target}, which imports {name} back"
        for name, imports in inner.items()
        for line, target in imports
        if target != name and reaches(target, name)
    ]
    assert not hidden, "\n".join(hidden)


def test_every_package_folder_is_installed():
    """A package missing from pyproject.toml's list works in the editable checkout and is
    absent from every real install (the images, `pip install .`)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(init) for folder in PACKAGES.values() for init in folder.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
