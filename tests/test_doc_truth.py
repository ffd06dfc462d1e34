"""The docs against the code, beyond options and links (tests/test_docs.py): every path of
this repository a page names exists; every option default a page states is the code's;
the steps docs/predicting.md says `make demo` runs are the Makefile's; the JSON fields the
pages list are the ones predict writes. Each check is also run on a planted error, which it
must catch."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import BRAINSCAN, cli_args, phantom_slices

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROSE = [p for p in PAGES if p.name != "cli.md"]  # cli.md is generated from the app itself

# --- paths ---------------------------------------------------------------------------------------

# this repository's own folders: a backticked path starting with one of them must exist
REPOSITORY_ROOTS = ("brainscan/", "client/", "export/", "train/", "benchmarks/", "tests/", "docs/", "deploy/")
REPOSITORY_ROOTS += ("docker/", ".ci/", "model_repository/")
PLACEHOLDER = re.compile(r"[<>*…{}$]")


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """Backticked repository paths in ``text`` that do not exist (placeholders, results of a
    run, and a file's line or anchor after ':' or '#' aside)."""
    missing = []
    for token in re.findall(r"`([^`\s]+)`", text):
        path = re.sub(r"[#:].*$", "", token.rstrip(".,;)"))
        if not path.startswith(REPOSITORY_ROOTS) or PLACEHOLDER.search(path):
            continue
        if path.startswith("benchmarks/results/") and path.count("/") > 3:  # a run's own files
            continue
        if not (root / path).exists():
            missing.append(path)
    return missing


@pytest.mark.parametrize("page", PROSE, ids=lambda p: p.name)
def test_every_repository_path_a_page_names_exists(page):
    assert missing_paths(page.read_text()) == []


def test_the_path_check_catches_a_planted_path():
    assert missing_paths("see `client/hospital/listener.py` and `export/served_graph.py`") == []
    assert missing_paths("see `brainscan/export/tensorrt.py`") == ["brainscan/export/tensorrt.py"]


# --- defaults ------------------------------------------------------------------------------------

# "`--idle` seconds (10)", "`--max-pdu` (16382 bytes)", "`--max-side` pixels a side (default 1024;"
STATED_DEFAULT = re.compile(
    r"`(--[a-z0-9-]+)`[^`()\n]{0,40}\((?:default:?\s*)?([0-9][0-9.]*)(?:\s*(?:s|ms|MB|MiB|GiB|bytes|seconds))?[),;\s]"
)


def option_defaults() -> dict[str, set]:
    """Every option of every command: its defaults (one option may sit on several commands)."""
    import typer

    from brainscan.cli import app

    found: dict[str, set] = {}

    def walk(command) -> None:
        for sub in getattr(command, "commands", {}).values():
            walk(sub)
        for param in getattr(command, "params", []):
            for flag in getattr(param, "opts", []):
                if flag.startswith("--"):
                    found.setdefault(flag, set()).add(param.default)

    walk(typer.main.get_command(app))
    return found


def wrong_defaults(text: str, defaults: dict[str, set]) -> list[str]:
    """Options whose default ``text`` states otherwise than the code (a computed default,
    None in the code, is the option's help to state)."""
    wrong = []
    for option, value in STATED_DEFAULT.findall(text):
        known = {d for d in defaults.get(option, ()) if d is not None}
        if option not in defaults:
            wrong.append(f"{option}: no such option")
        elif known and not any(isinstance(d, (int, float)) and float(d) == float(value) for d in known):
            wrong.append(f"{option}: the page says {value}, the code {sorted(map(str, known))}")
    return wrong


@pytest.fixture(scope="module")
def defaults():
    return option_defaults()


@pytest.mark.parametrize("page", PROSE, ids=lambda p: p.name)
def test_every_default_a_page_states_is_the_codes(page, defaults):
    assert wrong_defaults(page.read_text(), defaults) == []


def test_the_default_check_catches_a_planted_default(defaults):
    assert wrong_defaults("tried for `--retry-for` seconds (3600), then", defaults) == []
    assert wrong_defaults("tried for `--retry-for` seconds (1800), then", defaults) != []
    assert wrong_defaults("`--idle-for` (10)", defaults) == ["--idle-for: no such option"]


# --- what `make demo` runs -----------------------------------------------------------------------


def makefile_commands(target: str, text: str) -> list[str]:
    """The brainscan commands (`brainscan data phantom`, …) that `make TARGET` runs, through
    its prerequisites and the macros its recipes call, each once, in the order make meets them."""
    variables = dict(re.findall(r"^(?:export )?([A-Z0-9_]+)\s*[:?]?=\s*(.*)$", text, re.M))

    def expand(value: str) -> str:
        for _ in range(5):
            value = re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), value)
        return value

    macros = dict(re.findall(r"^define (\w+)\n(.*?)^endef", text, re.M | re.S))
    rules: dict[str, tuple[list[str], str]] = {}
    for match in re.finditer(r"^([^\s#][^:=\n]*?):(?!=)([^\n]*)\n((?:\t[^\n]*(?:\n|$))*)", text, re.M):
        targets, prerequisites, recipe = match.groups()
        for name in expand(targets).split():
            rules[name] = (expand(prerequisites.split("|")[0] + " " + prerequisites.split("|")[-1]).split(), recipe)
    seen, commands = set(), []

    def rule(name: str) -> tuple[list[str], str] | None:
        if name in rules:
            return rules[name]
        for pattern, (prerequisites, recipe) in rules.items():  # a pattern rule: % is the stem
            match = "%" in pattern and re.fullmatch(re.escape(pattern).replace("%", "(.+)"), name)
            if match:
                return [p.replace("%", match.group(1)) for p in prerequisites], recipe
        return None

    def visit(name: str) -> None:
        found = rule(name)
        if name in seen or found is None:
            return
        seen.add(name)
        prerequisites, recipe = found
        for prerequisite in prerequisites:
            visit(prerequisite)
        recipe += "".join(macros[m] for m in re.findall(r"\$\(call (\w+)", recipe) if m in macros)
        # variables that hold a brainscan command (PATIENT_DICOM) run it where the recipe names them
        recipe = re.sub(
            r"\$\((\w+)\)",
            lambda m: variables.get(m.group(1), "") if "brainscan " in variables.get(m.group(1), "") else m.group(0),
            recipe,
        )
        for step in re.findall(r"\$\(BIN\)/brainscan ((?:[a-z][a-z0-9-]* ?){1,2})", recipe):
            command = "brainscan " + " ".join(w for w in step.split() if w in SUBCOMMANDS or w in GROUPS)
            if command not in commands:
                commands.append(command)
        for other in re.findall(r"\$\(MAKE\)(?: --no-print-directory)? (\w[\w-]*)", recipe):
            visit(other)

    visit(target)
    return commands


GROUPS = {"data", "train", "export", "bench"}
SUBCOMMANDS = {
    "phantom", "split", "dicom", "classifier", "segmenter", "onnx", "fp16", "repository", "tensorrt",
    "serve", "health", "predict", "evaluate", "listen", "ui", "doctor",
}  # fmt: skip


def documented_demo(page: Path) -> list[str]:
    """The brainscan commands of the page's first shell block (the steps `make demo` runs)."""
    block = re.search(r"```bash\n(.*?)```", page.read_text(), re.S).group(1)
    commands = []
    for line in block.splitlines():
        for step in re.findall(r"(?:^|\$\(|\s)brainscan ((?:[a-z][a-z0-9-]* ?){1,2})", line):
            command = "brainscan " + " ".join(w for w in step.split() if w in SUBCOMMANDS or w in GROUPS)
            if command not in commands:
                commands.append(command)
    return commands


def test_the_steps_predicting_md_says_make_demo_runs_are_the_makefiles():
    made = makefile_commands("demo", (ROOT / "Makefile").read_text())
    assert "brainscan export fp16" in made and "brainscan evaluate" in made  # the parser sees them
    assert sorted(documented_demo(ROOT / "docs" / "predicting.md")) == sorted(made)


def test_the_demo_check_catches_a_planted_step():
    makefile = (ROOT / "Makefile").read_text()
    assert "brainscan export fp16" not in makefile_commands(
        "demo", makefile.replace("demo: venv repository fp16", "demo: venv repository")
    )


def test_make_stops_on_a_disk_too_full_for_the_venv_saying_so_as_the_readme_says(tmp_path):
    """The README's free-disk figure is the Makefile's, and below it `make venv` stops before it
    creates anything, naming the free space (here: a threshold no disk meets)."""
    minimum = re.search(r"^MIN_FREE_GB \?= ([\d.]+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"{minimum} GB of free disk" in (ROOT / "README.md").read_text()
    venv = tmp_path / "venv"
    run = subprocess.run(
        ["make", "-s", "-C", str(ROOT), f"VENV={venv}", "MIN_FREE_GB=1e12", "venv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert re.search(r"error: [\d.]+ GB free on this disk; .* need about 1e12 GB", run.stderr), run.stderr
    assert not venv.exists()


# --- JSON fields ---------------------------------------------------------------------------------


def documented_fields(text: str) -> set[str]:
    """Field names the pages give for predict's JSON: the failure record's
    (``{"file", "kind", …}``) and every ``"name":`` of the record's examples."""
    fields = set()
    for line in text.splitlines():
        if "failures as `{" in line:
            fields |= set(re.findall(r'"(\w+)"', line.split("failures as `{", 1)[1].split("}", 1)[0]))
        if "predict --format json" in line:
            fields |= set(re.findall(r'"(\w+)":', line))
    return fields


def keys_of(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


@pytest.mark.server
def test_every_json_field_the_pages_list_is_one_predict_writes(gated_server, phantom_dir, tmp_path):
    """A real run: two phantom slices, an image outside the intended use, and a file that is
    not an image; every field the pages name is in what predict printed."""
    import subprocess

    import numpy as np
    from PIL import Image

    files = phantom_slices(phantom_dir, 2)
    Image.fromarray((np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)).save(tmp_path / "noise.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    result = subprocess.run(
        [
            BRAINSCAN,
            *cli_args(
                "predict",
                *files,
                tmp_path / "noise.png",
                tmp_path / "broken.png",
                format="json",
                url=gated_server.grpc_url,
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    written = set().union(*(keys_of(json.loads(line)) for line in result.stdout.splitlines()))
    documented = set().union(*(documented_fields(p.read_text()) for p in PROSE))
    assert {"file", "kind", "error", "status", "intended_use", "probability", "label"} <= documented
    assert documented - written == set(), result.stdout
    planted = documented_fields('`json` (failures as `{"file", "kind", "reason"}`)')
    assert planted - written == {"reason"}  # the check sees a field no record has
