"""``streamrec <command> --help`` teaches: every option says its default (or what leaving it out
means), and every command ends with examples."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli
from streamrec.cli.main import build_parser


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def entries(text: str) -> list[tuple[str, str]]:
    """(``-x, --flag VALUE`` or a positional's name, its help text) for each argument listed."""
    listed: list[tuple[str, str]] = []
    section = False
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            section = line in ("options:", "positional arguments:", "optional arguments:")
            continue
        if not section or not line.strip():
            continue
        if re.match(r"  \S", line):
            head, _, rest = line[2:].partition("  ")
            listed.append((head.strip(), rest.strip()))
        elif listed:
            head, rest = listed[-1]
            listed[-1] = (head, f"{rest} {line.strip()}".strip())
    return listed


def test_every_command_is_covered():
    assert set(commands()) >= {"bench", "classify", "cluster", "dataset", "evaluate", "export", "history", "labels",
                               "lr-find", "quantize", "serve", "train"}  # and any command added later


@pytest.mark.parametrize("command", commands())
def test_help_shows_defaults_and_examples(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    listed = entries(text)
    assert listed, text
    assert "(default: None)" not in text
    for head, helptext in listed:
        assert helptext, f"{command} {head}: no help text"
        takes_value = head.startswith("-") and any(" " in part for part in head.split(", "))
        if takes_value:
            assert "default" in helptext or "required" in helptext, f"{command} {head}: {helptext!r} names no default"
    examples = text.split("\nexamples:\n", 1)
    assert len(examples) == 2, f"{command}: no examples"
    lines = [line.strip() for line in examples[1].splitlines() if line.strip()]
    assert 2 <= len(lines) <= 3 and all(line.startswith(f"streamrec {command}") for line in lines), lines


def test_lr_find_lists_only_its_own_options():
    text = run_cli("lr-find", "--help").stdout
    flags = {head.split()[0].rstrip(",") for head, _ in entries(text) if head.startswith("-")}
    assert {"--plot", "--batch-size", "--model", "--weights"} <= flags
    assert not flags & {"--epochs", "--patience", "--resume", "--out", "--lr", "--quiet", "--freeze-backbone"}


@pytest.mark.slow
def test_json_is_a_switch_everywhere():
    for command in commands():
        for head, _ in entries(run_cli(command, "--help").stdout):
            if head.split(", ")[-1].split()[0] == "--json":
                assert head.endswith("--json"), f"{command}: {head}"  # no value after it


def test_export_takes_the_checkpoint_as_weights():
    text = run_cli("export", "--help").stdout
    assert "--weights WEIGHTS" in text and "checkpoint" not in text.split("options:")[0].split("usage:")[1]
