"""Figures written as PNG files (``classify --plot``, ``dataset --sheet``, ``lr-find --plot``,
``evaluate``'s confusion matrix) are drawn with matplotlib, an optional dependency:
``pip install -e '.[plot]'``. :func:`pyplot` gives its ``pyplot`` on the file-only ``Agg``
backend (no screen needed), or a one-line error naming the option and the install command.

Example:
    >>> plt = pyplot("--plot")
    >>> fig, ax = plt.subplots(); plt.close(fig)
"""

from __future__ import annotations

from typing import Any

from streamrec.errors import require

EXTRA = "plot"  # the optional dependencies of [project.optional-dependencies] that draw figures


def require_plotting(what: str) -> None:
    """Fail at once (before any work) when ``what`` (an option) needs matplotlib and it is missing."""
    require("matplotlib", EXTRA, what)


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the ``Agg`` backend; ``what`` names the option in the error."""
    require_plotting(what)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colormap(name: str, what: str) -> Any:
    """matplotlib's colormap ``name`` (``"tab20"``...)."""
    require_plotting(what)
    import matplotlib

    return matplotlib.colormaps[name]
