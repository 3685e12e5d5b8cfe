"""The documentation against the code: README.md and docs/**/*.md show only commands that exist.

Fast and offline: the CLI's parser is built, not run; the Makefile and deployments/prefect.yaml are
read as text. A failure names the file, the line and what is unknown.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from nightcast.flows.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "shell-session", "zsh"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "<"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for every command line of the file's shell code blocks (bash, sh,
    console or no language), with backslash continuations joined and ``$ `` prompts removed."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    shell = False
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(raw)
        if fence is None:
            if match:
                fence, shell = match.group(2), match.group(3).lower() in SHELL_LANGS
            continue
        if match and raw.strip().startswith(fence[0] * len(fence)) and not match.group(3):
            if pending:
                out.append(pending)
            fence, pending = None, None
            continue
        if not shell:
            continue
        text = raw.strip()
        if pending:
            start, joined = pending
            text, pending = joined + " " + text, None
        else:
            start = number
            if text.startswith("$ "):
                text = text[2:].lstrip()
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        if text:
            out.append((start, text))
    return out


def inline_code(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span outside code blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(raw)
        if match:
            if fence is None:
                fence = match.group(2)
            elif raw.strip().startswith(fence[0] * len(fence)) and not match.group(3):
                fence = None
            continue
        if fence is None:
            out.extend((number, span) for span in INLINE_CODE.findall(raw))
    return out


def words(command: str) -> list[str]:
    """Shell words of one command, up to the first operator; comments dropped."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in prose-like text: split plainly
        tokens = command.split(" #", 1)[0].split()
    for i, token in enumerate(tokens):
        if token in SHELL_OPERATORS:
            return tokens[:i]
    return tokens


def invocation(command: str, program: str) -> list[str] | None:
    """The arguments after ``program`` when the command runs it (after any ``VAR=value``), else None."""
    tokens = words(command)
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if tokens and (tokens[0] == program or tokens[0].endswith("/" + program)):
        return tokens[1:]
    return None


def commands(program: str) -> list[tuple[str, list[str]]]:
    """Every place README.md or docs/ shows ``program`` run: (file:line, arguments)."""
    found = []
    for path in doc_files():
        for number, line in shell_lines(path) + inline_code(path):
            args = invocation(line, program)
            if args is not None:
                found.append((where(path, number), args))
    return found


def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The global options and, per subcommand, the options its parser accepts."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    options = {name: set(sub._option_string_actions) for name, sub in subparsers.choices.items()}
    return set(parser._option_string_actions), options


def unknown_cli_usage(shown: list[tuple[str, list[str]]]) -> list[str]:
    global_options, options = cli_options()
    problems = []
    for place, args in shown:
        i = 0
        while i < len(args) and args[i].startswith("-"):  # global options before the command
            if args[i].split("=", 1)[0] not in global_options:
                problems.append(f"{place}: unknown global option {args[i]!r} of nightcast")
            i += 1
        if i == len(args):
            continue
        command = args[i]
        if command not in options:
            if re.fullmatch(r"[a-z][a-z-]*", command):
                problems.append(f"{place}: unknown subcommand 'nightcast {command}'")
            continue
        for arg in args[i + 1:]:
            flag = arg.split("=", 1)[0]
            if flag.startswith("-") and len(flag) > 1 and not re.fullmatch(r"-\d[\d.]*", flag):
                if flag not in options[command] | global_options:
                    problems.append(f"{place}: 'nightcast {command}' has no flag {flag!r}")
    return problems


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", text, flags=re.M))


def deployment_names() -> set[str]:
    """``<flow name>/<deployment name>`` for every deployment in deployments/prefect.yaml, the flow
    name read from the entrypoint's ``@flow(name=...)`` without importing the module."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text(encoding="utf-8"))
    names = set()
    for deployment in spec["deployments"]:
        module, _, attr = deployment["entrypoint"].rpartition(".")
        source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name == attr:
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "flow":
                        flow = next(k.value.value for k in decorator.keywords if k.arg == "name")
                        names.add(f"{flow}/{deployment['name']}")
    return names


# --- the checks ------------------------------------------------------------------------------------


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines, more than {MAX_README_LINES}: move the detail into docs/")


def test_every_nightcast_command_shown_exists_with_its_flags() -> None:
    shown = commands("nightcast")
    assert len(shown) >= 10, f"found only {len(shown)} nightcast commands in the docs: is the parser broken?"
    problems = unknown_cli_usage(shown)
    assert not problems, "commands in the docs that the CLI does not accept:\n" + "\n".join(problems)


def test_every_flag_in_a_flags_table_exists() -> None:
    """Tables whose first column is headed ``flag`` (the command line's reference) list real flags."""
    global_options, options = cli_options()
    known = global_options.union(*options.values())
    problems, rows = [], 0
    for path in doc_files():
        in_table = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
            if not cells:
                in_table = False
            elif cells[0].lower() == "flag":
                in_table = True
            elif in_table and not set(cells[0]) <= set("-: "):
                rows += 1
                for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", cells[0]):
                    if flag not in known:
                        problems.append(f"{where(path, number)}: no nightcast command has the flag {flag!r}")
    assert rows, "no flags table found in the docs"
    assert not problems, "\n".join(problems)


def test_every_make_target_shown_exists() -> None:
    targets = makefile_targets()
    problems = []
    for place, args in commands("make"):
        for arg in args:
            placeholder = arg.startswith("<") or arg in ("...", "…")
            if not arg.startswith("-") and "=" not in arg and not placeholder and arg not in targets:
                problems.append(f"{place}: no Makefile target {arg!r}")
    assert not problems, "make targets in the docs that the Makefile lacks:\n" + "\n".join(problems)


def test_every_deployment_shown_exists() -> None:
    names = deployment_names()
    flows = {name.split("/")[0] for name in names}
    problems = []
    for path in doc_files():
        shown = [(n, s) for n, s in inline_code(path) if re.fullmatch(r"[a-z]+/[a-z-]+", s)
                 and s.split("/")[0] in flows]
        for number, line in shell_lines(path):
            args = invocation(line, "prefect")
            if args and args[:2] == ["deployment", "run"] and len(args) > 2:
                shown.append((number, args[2]))
        problems += [f"{where(path, n)}: no deployment {s!r} (deployments/prefect.yaml has {sorted(names)})"
                     for n, s in shown if s not in names]
    assert not problems, "\n".join(problems)


def test_readme_links_into_docs_exist() -> None:
    problems, links = [], 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        for target in LINK.findall(line):
            path = target.split("#", 1)[0]
            if re.match(r"^[a-z]+:", target) or not path.startswith("docs/"):
                continue
            links += 1
            if not (ROOT / path).is_file():
                problems.append(f"README.md:{number}: link to {path}, which does not exist")
    assert links, "README.md links to no page under docs/"
    assert not problems, "\n".join(problems)


# --- the checker itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(("block", "expected"), [
    ("```bash\nnightcast score --as-of 2026-10-12 --bogus 3\n```\n", ["has no flag '--bogus'"]),
    ("```\n$ NIGHTCAST_STORE=/tmp/s nightcast retrain \\\n    --data x.csv --as-of 4\n```\n",
     ["'nightcast retrain' has no flag '--as-of'"]),
    ("```console\n$ nightcast frobnicate\n```\n", ["unknown subcommand 'nightcast frobnicate'"]),
    ("```python\nnightcast score --bogus  # not shell: not checked\n```\n", []),
    ("Inline: `nightcast -v backfill --start 2026-09-01 --end 2026-09-30 --overwrite`.\n", []),
    ("```bash\nnightcast monitor --vs-seasonal-naive off | tee log  # --not-a-flag\n```\n", []),
])
def test_checker_finds_unknown_commands_and_flags(tmp_path: Path, block: str, expected: list[str]) -> None:
    page = tmp_path / "page.md"
    page.write_text("# page\n\n" + block, encoding="utf-8")
    shown = [(f"page.md:{n}", args) for n, line in shell_lines(page) + inline_code(page)
             if (args := invocation(line, "nightcast")) is not None]
    problems = unknown_cli_usage(shown)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem and problem.startswith("page.md:4:")


def test_every_module_has_its_place_in_the_api_reference():
    """A module added under flows/, tasks/, models/ or schemas/ must be listed in docs/reference/."""
    shown = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        shown |= set(re.findall(r"^::: (nightcast\.[\w.]+)", page.read_text(), re.M))
    modules = set()
    for top in ("flows", "tasks", "models", "schemas"):
        for path in (ROOT / top).rglob("*.py"):
            if path.name != "__init__.py":
                modules.add("nightcast." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert sorted(modules - shown) == []
