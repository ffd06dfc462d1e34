"""The package as it installs, without installing it: pyproject's package-dir mapping as a
tree of symlinks. mypy reads it (it cannot follow an editable install's import hook), and
the GPU-test command is tried on it the way the export image sees a non-editable install."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(root: Path, replace: dict[Path, str] | None = None) -> Path:
    """Symlinks under ``root`` for every module of every package; ``replace`` maps source
    files to text written in their place instead."""
    replace = replace or {}
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items()):
        target = root.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            link = target / source.name
            if source in replace:
                link.write_text(replace[source])
            elif not link.exists():
                link.symlink_to(source)
    return root


def site_packages() -> str:
    """This environment's site-packages (where the dependencies are)."""
    return sysconfig.get_paths()["purelib"]
