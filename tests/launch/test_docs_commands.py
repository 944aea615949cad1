"""The commands in the README, docs/ and every command's --help examples stay runnable.

* Every `prorank COMMAND ...` line in a shell block or inline code span of README.md and
  docs/*.md, every `launch/tpu_pod.sh ... -- COMMAND ...` / `launch/multi_gpu.sh ... COMMAND`
  line, and every example of launch/command_help.py names a real command and only flags that
  command's --help lists (no JAX: the parsers only).
* A shell block preceded by `<!-- docs-test: run -->` runs on the bundled data as written, in
  a scratch folder, every line exiting 0 (a line that is not a prorank command, e.g. the
  printf that writes an input file, runs in bash). One preceded by `<!-- docs-test: dry-run -->` holds
  training commands that take minutes; each runs with --dry-run (config resolved and checked,
  mesh and memory plan), which reads the starting model's config.json: a model.path naming an
  earlier line's out_dir gets the bundled tiny model's config.json, the model that stage
  would have saved there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch import cli
from launch.command_help import EXAMPLES
from prorank_jax.pretrained import bundled_warm_start_dir

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
MARKED_BLOCK = re.compile(r"<!-- docs-test: (run|dry-run) -->\n```bash\n(.*?)```", re.S)
INLINE = re.compile(r"(?<!`)`(prorank [^`]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PLACEHOLDER = re.compile(r"[A-Z_]+|<[a-z]+>")
LAUNCHER_OPTIONS = {"--coordinator", "--num-processes", "--process-id"}  # launch/multi_gpu.sh's own


def shell_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.append(line)
    return lines


def prorank_argv(line: str) -> list[str] | None:
    """[COMMAND, args...] of a prorank line, directly or through one of the launchers."""
    words = shlex.split(line, comments=True)
    # `# ...` after a command is a comment; shlex keeps `[`-style placeholders as words
    if not words:
        return None
    if words[0] == "prorank":
        return words[1:]
    if words[0].endswith("launch/tpu_pod.sh") and "--" in words:
        return words[words.index("--") + 1:]
    if words[0].endswith("launch/multi_gpu.sh"):
        rest = words[1:]
        while rest and rest[0] in LAUNCHER_OPTIONS:
            rest = rest[2:]
        return rest
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, [COMMAND, args...]) of every prorank command in the docs and the --help examples."""
    found = []
    for path in DOCS:
        text = path.read_text()
        name = path.relative_to(ROOT)
        for block in SHELL_BLOCK.findall(text):
            for line in shell_lines(block):
                argv = prorank_argv(line)
                if argv is not None:
                    found.append((f"{name}: {line.strip()[:80]}", argv))
        for code in INLINE.findall(text):
            found.append((f"{name}: `{code[:80]}`", shlex.split(code)[1:]))
    for command, examples in EXAMPLES.items():
        for line, _ in examples:
            found.append((f"{command} --help example: {line[:80]}", shlex.split(line)[1:]))
    return found


_HELP: dict[str, str] = {}


def help_text(command: str) -> str:
    """The command's --help, from its own parser (as `prorank COMMAND --help` prints it)."""
    if command not in _HELP:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            importlib.import_module(cli.COMMANDS[command][0]).main(["--help"])
        _HELP[command] = out.getvalue()
    return _HELP[command]


def test_every_documented_command_uses_flags_its_command_has():
    commands = documented_commands()
    assert len(commands) > 40  # the README, docs/ and the examples all went through
    problems = []
    for where, argv in commands:
        if argv in (["--help"], ["-h"]) or PLACEHOLDER.fullmatch(argv[0]):  # `prorank --help`, `prorank <command>`
            continue
        if argv[0] not in cli.COMMANDS:
            problems.append(f"{where}: no such command {argv[:1]}")
            continue
        known = set(FLAG.findall(help_text(argv[0])))
        unknown = sorted({flag for word in argv[1:] for flag in FLAG.findall(word)} - known)
        if unknown:
            problems.append(f"{where}: {argv[0]} has no {', '.join(unknown)}")
    assert not problems, "\n".join(problems)


def test_every_command_has_examples_at_the_end_of_its_help():
    for command in cli.COMMANDS:
        text = help_text(command)
        examples = text[text.rindex("examples:"):].splitlines()[1:]
        assert EXAMPLES[command] and [line.strip() for line in examples[::2]] == [e for e, _ in EXAMPLES[command]]


def test_every_relative_link_of_the_docs_exists():
    """The moves into docs/ keep their links: every relative [text](path) names a file or folder."""
    missing = []
    for path in DOCS:
        for target in LINK.findall(path.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, "\n".join(missing)


def marked_blocks() -> list[tuple[str, str, list[str]]]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in MARKED_BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            blocks.append((f"{path.relative_to(ROOT)}:{line}", match.group(1), shell_lines(match.group(2))))
    return blocks


def test_the_readme_marks_its_bundled_data_commands():
    """The marker is what puts a block under test: the README's task commands keep it."""
    marked = {(how, prorank_argv(line)[0]) for where, how, lines in marked_blocks() if where.startswith("README")
              for line in lines if prorank_argv(line)}
    assert marked >= {("run", "rank"), ("run", "prepare-data"), ("run", "evaluate"),
                      ("dry-run", "train-grpo"), ("dry-run", "train-score")}


def scratch_folder(tmp_path: Path) -> Path:
    """A folder where the docs' relative paths (prorank_jax/data/bundled, launch/configs/...) resolve."""
    for name in ("prorank_jax", "launch"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "launch.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("where, how, lines", [pytest.param(*block, id=f"{block[0]}-{block[1]}")
                                                for block in marked_blocks()])
def test_marked_block_runs(where, how, lines, tmp_path):
    cwd = scratch_folder(tmp_path)
    written: set[str] = set()
    for line in lines:
        argv = prorank_argv(line)
        if argv is None and how == "run":  # a shell line that makes the input, e.g. printf ... > docs.txt
            proc = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"{where}: {line}\n{proc.stderr}"
            continue
        assert argv is not None, f"{where}: only prorank commands in a dry-run block: {line}"
        if how == "dry-run":
            assert argv[0] in ("train-grpo", "train-score"), f"{where}: --dry-run is for training commands"
            for word in argv:
                path = word.partition("model.path=")[2]
                if path in written:  # the earlier line's run, which a dry run does not make
                    (cwd / path).mkdir(parents=True, exist_ok=True)
                    shutil.copy(bundled_warm_start_dir() / "config.json", cwd / path / "config.json")
            written |= {w.partition("out_dir=")[2] for w in argv if w.startswith("out_dir=")}
            argv = [*argv, "--dry-run"]
        proc = run(argv, cwd)
        assert proc.returncode == 0, f"{where}: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if how == "dry-run":
            assert "resolved config:" in proc.stdout and "memory per device" in proc.stdout.lower(), proc.stdout
