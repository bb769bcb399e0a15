"""User-facing errors.

Every failure a user can cause (bad file, unknown model, port in use, ...) is raised as
:class:`StreamrecError`. The CLI prints its message on one line and exits with code 2;
library callers can catch it like any other exception.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from streamrec.redact import printable


class StreamrecError(Exception):
    """An error caused by input or environment, with a one-line message for the user."""

    exit_code = 2

    def __str__(self) -> str:  # keep the CLI's promise of one line, drawn as written (an ESC is shown, not obeyed)
        return printable(" ".join(super().__str__().split()))


class OptionError(StreamrecError):
    """A bad value of the serve options ``options`` (their config names, e.g. ``"stall_timeout"``).

    Its message names them as command-line flags; a config read from a file names them as the
    file's keys instead (:meth:`in_file`), since that is where the user wrote them.

    Example:
        >>> err = OptionError(("port",), "expected 0..65535, got 99999")
        >>> str(err), str(err.in_file("gym.toml"))
        ('--port: expected 0..65535, got 99999', 'gym.toml: port: expected 0..65535, got 99999')
    """

    def __init__(self, options: tuple[str, ...], detail: str) -> None:
        self.options, self.detail = options, detail
        super().__init__("/".join("--" + o.replace("_", "-") for o in options) + ": " + detail)

    def in_file(self, file: str) -> StreamrecError:
        """The same error, its options named as the keys of the config file ``file``."""
        return StreamrecError(f"{file}: {', '.join(self.options)}: {self.detail}")


class Busy(StreamrecError):
    """What was asked cannot be done now, only in a moment (the API answers 409 Conflict)."""


class SourceError(StreamrecError):
    """A video source could not be opened or read."""


class WeightsError(StreamrecError):
    """Model weights could not be found, downloaded or matched to the model."""


def install_hint(extra: str) -> str:
    """The command that installs streamrec's optional dependencies ``extra`` (a name of
    ``[project.optional-dependencies]``). streamrec is installed from its folder, not from a
    package index: the command names that folder, so it works from anywhere.

    Example:
        >>> install_hint("onnx").startswith("pip install -e ") and install_hint("onnx").endswith("[onnx]'")
        True
    """
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return "pip install -e " + shlex.quote(f"{root}[{extra}]")
    return f"pip install -e '.[{extra}]' (in the streamrec folder)"


def require(module: str, extra: str, what: str) -> None:
    """Raise a one-line :class:`StreamrecError` naming ``what`` needs it and the install command,
    when ``module`` (of the optional dependencies ``extra``) is not installed. Called where a
    feature is asked for (an option, a config table), before any work starts.

    Example:
        >>> require("json", "plot", "--plot")  # installed: nothing happens
        >>> require("no_such_module_here", "plot", "--plot")
        Traceback (most recent call last):
        ...
        streamrec.errors.StreamrecError: --plot: no_such_module_here is not installed; pip install -e ...
    """
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module half-installed
        found = False
    if not found:
        raise StreamrecError(f"{what}: {module} is not installed; {install_hint(extra)}")
