"""The CLI reference (docs/cli.md), generated from the Typer app itself so that no option
can go missing from the docs: `make cli-docs` rewrites it, and a test fails when the
committed page differs from what the app would write."""

from __future__ import annotations

import sys
from pathlib import Path

from brainscan import contract

PAGE = Path("docs") / "cli.md"
HEADER = """# CLI reference

Generated from the `brainscan` Typer app by `make cli-docs` (`python -m brainscan.clidoc`);
`tests/test_docs.py` fails when this page and the app disagree. Defaults under `artifacts/`
move with `BRAINSCAN_ARTIFACTS`. Exit codes: [README](../README.md#exit-codes).
"""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _is_flag(param) -> bool:
    return param.param_type_name == "option" and bool(param.is_flag)


def _default(param) -> str:
    if _is_flag(param) and param.secondary_opts:
        return "" if param.default is None else f"`{param.opts[0] if param.default else param.secondary_opts[0]}`"
    if _is_flag(param):
        return "on" if param.default else "off"
    default = param.default
    if callable(default) or default in (None, "", (), []):
        return ""
    if isinstance(default, (list, tuple)):
        default = ", ".join(str(d) for d in default)
    text = str(default)
    artifacts = str(contract.artifacts_dir())
    if text.startswith(artifacts):  # the value of BRAINSCAN_ARTIFACTS when the page is made
        text = contract.DEFAULT_ARTIFACTS + text[len(artifacts) :]
    return f"`{text}`"


def _kind(param, ctx) -> str:
    if _is_flag(param):
        return "flag"
    shown = (param.display_type(ctx) or "").strip("<>")
    return " \\| ".join(f"`{choice}`" for choice in shown.split("|")) if "|" in shown else shown


def _names(param) -> str:
    if param.param_type_name == "argument":
        return (
            f"`{param.name.upper()}`" + ("" if param.required else " (optional)") + (" …" if param.nargs == -1 else "")
        )
    names = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    return names + (" (repeatable)" if getattr(param, "multiple", False) else "")


def _command(path: list[str], command) -> list[str]:
    from typer import _click

    ctx = _click.Context(command)
    lines = [f"## {' '.join(path)}", ""]
    if command.help:
        lines += [_cell(command.help.split("\b")[0]), ""]
    params = [p for p in command.params if not getattr(p, "hidden", False) and p.name != "help"]
    if params:
        lines += ["| argument / option | type | default | environment | meaning |", "|---|---|---|---|---|"]
        for param in params:
            envvar = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or [])
            lines.append(
                f"| {_names(param)} | {_kind(param, ctx)} | {_default(param)} | "
                f"{f'`{envvar}`' if envvar else ''} | {_cell(getattr(param, 'help', '') or '')} |"
            )
        lines.append("")
    return lines


def _walk(path: list[str], command) -> list[tuple[list[str], object]]:
    if hasattr(command, "commands"):
        found = []
        for name in sorted(command.commands):
            found += _walk([*path, name], command.commands[name])
        return found
    return [(path, command)]


def render() -> str:
    import typer

    from brainscan.cli import app

    commands = _walk(["brainscan"], typer.main.get_command(app))
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    for path, command in commands:
        anchor = "-".join(path)
        summary = _cell((command.help or "").split("\n\n")[0].split("\b")[0])
        lines.append(f"| [`{' '.join(path)}`](#{anchor}) | {summary} |")
    lines.append("")
    for path, command in commands:
        lines += _command(path, command)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
