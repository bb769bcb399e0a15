"""streamrec: real-time video action recognition with torchvision's video models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_recognizer", "classify_file", "kinetics", "Recognizer"]


def __getattr__(name: str):
    # Lazy: `import streamrec` stays cheap (torch loads on first use).
    if name in ("load_recognizer", "Recognizer"):
        from streamrec.offline import api

        return getattr(api, name)
    if name == "classify_file":
        from streamrec.offline.classify import classify_file

        return classify_file
    if name == "kinetics":
        import importlib

        return importlib.import_module("streamrec.models.kinetics")
    raise AttributeError(f"module 'streamrec' has no attribute {name!r}")
