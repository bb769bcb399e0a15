"""``--help`` shows the defaults the config really has: each serve and cluster option that is a
:class:`~streamrec.config.ServeConfig` field and names a default in its help names the field's
default (read from the dataclass, never typed a second time), or for a field whose default is
decided at run time (``None``), what decides it."""

from __future__ import annotations

import dataclasses
import re

import pytest

from streamrec.cli.main import build_parser
from streamrec.catalog import DEFAULT_MODEL
from streamrec.config import ServeConfig

FIELDS = {f.name for f in dataclasses.fields(ServeConfig)}
AT_RUN_TIME = {"model": DEFAULT_MODEL, "db": "~/.local/share/streamrec/history.db"}  # None in the config


def subparser(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps its subparsers here
    return sub.choices[name]


def shown_defaults(name: str) -> dict[str, str]:
    """Option -> the default its help names (``(default X`` up to a comma, colon, semicolon or bracket)."""
    out = {}
    for action in subparser(name)._actions:
        m = re.search(r"\(default ([^,:;)]+)", action.help or "")
        if action.dest in FIELDS and m:
            out[action.dest] = m.group(1).strip()
    return out


@pytest.mark.parametrize("command, expected", [
    ("serve", {"model", "weights", "device", "backend", "host", "port", "camera", "rtsp_transport", "stall_timeout",
               "open_timeout", "stride_ms", "db"}),
    ("cluster", {"host", "port"}),
])
def test_help_names_the_configs_defaults(command, expected):
    shown = shown_defaults(command)
    assert set(shown) == expected
    for name, text in shown.items():
        value = getattr(ServeConfig, name)
        if value is None:
            assert text == AT_RUN_TIME[name]
            continue
        assert text.strip("'") == (f"{value:g}" if isinstance(value, float) else str(value)), name


def test_a_changed_default_shows_in_help(monkeypatch):
    monkeypatch.setattr(ServeConfig, "port", 8123)
    assert shown_defaults("serve")["port"] == "8123"
    assert shown_defaults("cluster")["port"] == "8123"
