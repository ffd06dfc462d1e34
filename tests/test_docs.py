"""The docs agree with the code: the CLI reference is what the app generates today, every
`brainscan …` command written in the README and docs/ names a real command and real options
of it, every `make` target they name exists, every page of docs/ is reachable from the
README, and every relative link (and its #anchor) resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from brainscan import clidoc
from brainscan.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def commands_in(page: Path) -> list[str]:
    """Every `brainscan …` invocation in the page's code blocks and inline code, with
    backslash continuations joined."""
    text = page.read_text()
    lines = [
        line.split(" # ")[0]
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    found = []
    for line in lines:
        for match in re.finditer(r"(?:^|[\s/(])(brainscan (?:[a-z][\w-]*)(?: [^|;&#)`$]*)?)", line):
            if not line[: match.start(1)].rstrip().endswith(("-n", "--namespace")):  # kubectl's namespace
                found.append(match.group(1))
    return found


def resolve(words: list[str]):
    """The click command a `brainscan` invocation names, and the words after it."""
    command = typer.main.get_command(app)
    rest = words[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_the_cli_reference_is_what_the_app_generates():
    page = ROOT / clidoc.PAGE
    assert page.read_text() == clidoc.render(), "docs/cli.md is stale: run `make cli-docs`"


def test_the_cli_reference_lists_every_option_of_every_command():
    text = clidoc.render()

    def walk(path, command):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk([*path, name], sub)
        else:
            yield path, command

    for path, command in walk(["brainscan"], typer.main.get_command(app)):
        section = text.split(f"## {' '.join(path)}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            name = param.opts[0] if param.param_type_name == "option" else param.name.upper()
            assert f"`{name}`" in section, (path, name)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_brainscan_command_in_the_docs_is_real_with_real_options(page):
    checked = 0
    for invocation in commands_in(page):
        try:
            words = shlex.split(invocation)
        except ValueError:
            words = invocation.split()
        command, rest = resolve(words)
        assert not hasattr(command, "commands") or not rest or rest[0].startswith("-") or rest[0] in ("…", "..."), (
            f"{page.name}: `{invocation}` names no command"
        )
        options = {
            opt
            for param in command.params
            for opt in (*getattr(param, "opts", []), *getattr(param, "secondary_opts", []))
        }
        for word in rest:
            option = word.split("=")[0]
            if option.startswith("--"):
                assert option in options, (
                    f"{page.name}: `{invocation}`: {option} is not an option of `{' '.join(words[:2])}…`"
                )
        checked += 1
    if page.name in ("README.md", "predicting.md", "gpu.md", "fleet.md", "benchmarks.md"):
        assert checked, f"{page.name} shows no brainscan command"


def test_every_make_target_the_docs_name_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z][\w-]*):", makefile))
    named = {m for page in PAGES for m in re.findall(r"`make ([a-z][\w-]*)", page.read_text())}
    assert named and named <= targets, named - targets


def test_every_page_of_docs_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {target.split("#")[0] for target in LINK.findall(readme)}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in linked, page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: {target}"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(destination), f"{page.name}: {target}: no heading #{anchor} in {destination.name}"


def _commands(command, path=()):
    if hasattr(command, "commands"):  # a group (Typer carries its own click)
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_help_promises_only_options_and_variables_the_command_has():
    """Help text that names a flag or a BRAINSCAN_ variable is checked against the command
    itself (`bench run --url` once promised several servers and dns:///, and passed one to
    perf_analyzer; `serve --metrics-host` promised "as HTTP" and bound 127.0.0.1)."""
    sources = [p for d in ("brainscan", "client", "export", "train", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    read_by_code = {v for p in sources for v in re.findall(r"\"(BRAINSCAN_[A-Z_]+)\"", p.read_text())}
    wrong = []
    for name, command in _commands(typer.main.get_command(app)):
        flags = {flag for p in command.params for flag in (*p.opts, *getattr(p, "secondary_opts", []))}
        variables = {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}
        for text in [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]:
            for match in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]+", text):
                before = text[: match.start()]
                elsewhere = re.search(r"(brainscan [a-z]+|perf_analyzer|tritonserver|docker)\b[^()`]*$", before)
                if match.group() not in flags and not elsewhere:
                    wrong.append(f"{name}: {match.group()} in {text[:80]!r}")
            for variable in re.findall(r"BRAINSCAN_[A-Z_]+", text):
                if variable not in variables and variable not in read_by_code:
                    wrong.append(f"{name}: {variable} is not a variable of its options")
        url = next((p for p in command.params if "--url" in p.opts), None)
        if url is not None and not url.multiple:  # one server: its help must not promise several
            assert not re.search(r"several|dns:///|comma", url.help or ""), f"{name} --url: {url.help}"
    assert not wrong, "\n".join(wrong)


def test_every_placeholder_a_help_names_reaches_the_screen():
    """Help is Markdown (Rich): a bare <name> is taken for an HTML tag and dropped, so
    `predict --help` once said "Folder for .mask.png". Every <placeholder> in a command's or
    option's help must show in its --help as the user sees it."""
    runner = CliRunner()
    missing = []
    for name, command in _commands(typer.main.get_command(app)):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        placeholders = {found for text in texts for found in re.findall(r"<[a-z_]+>", text)}
        if placeholders:
            shown = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "300"}).output
            missing += [f"{name}: {p}" for p in sorted(placeholders) if p not in shown]
    assert not missing, "\n".join(missing)
