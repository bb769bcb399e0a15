"""The runnable examples in the docstrings run and give what they show."""

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamrec"
# every module with an example that runs: one added later is tested without anyone listing it
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                 if any(">>> " in line and "+SKIP" not in line for line in p.read_text().splitlines()))


def test_the_modules_with_examples_are_found():
    assert {"live.ring", "runtime.backends", "offline.quantize", "catalog", "runtime.firststart"} <= set(MODULES)
    assert "models.exported" not in MODULES  # its examples need a model file: skipped


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMREC_CACHE", str(tmp_path))
    module = importlib.import_module(f"streamrec.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"streamrec.{name} has no examples"
    assert result.failed == 0
