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


# The rooms and what each may import (docs/development.md, "Rooms"): a room's modules import
# the core and the rooms listed here, never the others. The front ends (brainscan.cli, each
# group's cli.py, client's options and ui) bring the rooms together.
CORE = "core"
ROOMS = {  # room: prefixes of its modules (the longest match names a module's room)
    CORE: ("brainscan",),
    "serving": ("brainscan.serving",),
    "triton client": ("brainscan.client.triton",),
    "imaging": ("brainscan.client.imaging",),
    "batch engine": ("brainscan.client.batch",),
    "hospital": ("brainscan.client.hospital",),
    "client front ends": (
        "brainscan.client",
        "brainscan.client.cli",
        "brainscan.client.options",
        "brainscan.client.ui",
    ),
    "train": ("brainscan.train",),
    "export": ("brainscan.export",),
    "benchmarks": ("brainscan.benchmarks",),
    "root": ("brainscan.cli", "brainscan.clidoc"),
}
MAY_IMPORT = {
    CORE: {"serving"},  # the core's own server launcher (brainscan.serving is the core's too)
    "serving": set(),
    "triton client": set(),
    "imaging": set(),
    "batch engine": {"triton client", "imaging"},
    "hospital": {"triton client", "imaging", "batch engine"},
    "client front ends": {"triton client", "imaging", "batch engine", "hospital"},
    # evaluate judges the served models through a server: the Triton client and its options
    "train": {"triton client", "client front ends"},
    "export": {"train"},  # reads training runs
    "benchmarks": {"triton client", "imaging", "export", "train", "serving"},  # measures them
    "root": set(ROOMS),
}


def room_of(module: str) -> str:
    best, best_length = CORE, 0
    for room, prefixes in ROOMS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = room, len(prefix)
    return best


def imports_between_rooms() -> list[str]:
    """Every import (top level or in a function) of a module from a room its room may not import."""
    wrong = []
    for folder in PACKAGES.values():
        for path in folder.rglob("*.py"):
            if "triton_models" in path.parts:
                continue
            module = _module_name(path)
            room = room_of(module)
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainscan"):
                    names = [node.module]
                    if node.module in ("brainscan", "brainscan.client"):  # `from brainscan.client import hospital`
                        names = [f"{node.module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names if alias.name.startswith("brainscan")]
                for name in names:
                    other = room_of(name)
                    if other not in (room, CORE) and other not in MAY_IMPORT[room]:
                        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} ({room}) imports {name} ({other})")
    return wrong


def test_each_room_imports_only_the_rooms_it_may():
    assert imports_between_rooms() == []


def test_the_room_check_sees_a_planted_import(tmp_path, monkeypatch):
    planted = ROOT / "export" / "zz_planted_for_test.py"
    planted.write_text("from brainscan.client.imaging.volumes import axial_image\n")
    try:
        assert imports_between_rooms() == [
            "export/zz_planted_for_test.py:1 (export) imports brainscan.client.imaging.volumes (imaging)"
        ]
    finally:
        planted.unlink()
