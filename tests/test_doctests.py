"""The runnable examples in the docstrings run and give what they show."""

import doctest
import importlib

import pytest

MODULES = ["ring", "preprocess", "smoothing", "history", "sources", "config", "kinetics", "fsutil", "models",
           "tiny3d", "api", "conv2d", "engine", "prepared", "validate", "distributed", "messages", "app", "live"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMREC_CACHE", str(tmp_path))
    module = importlib.import_module(f"streamrec.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"streamrec.{name} has no examples"
    assert result.failed == 0
