"""Kinetics-400 class names and their groups (``streamrec labels``).

The grouping (each class in exactly one parent group; sport groups flagged) is data shipped
in ``streamrec/models/data/kinetics400_groups.json``; the class names are read from it too,
without importing torch (``streamrec labels`` answers at once). They are torchvision's weights
meta, which lists the classes in alphabetical order (``tests/test_kinetics.py`` checks both).

Example:
    >>> from streamrec import kinetics
    >>> len(kinetics.classes()), len(kinetics.sport_classes())
    (400, 134)
    >>> kinetics.group_of("playing tennis")
    'racquet and bat sports'
"""

from __future__ import annotations

from typing import Any, Sequence

from streamrec.errors import StreamrecError


def classes() -> list[str]:
    """The 400 Kinetics class names, in the order of the models' outputs (alphabetical)."""
    return sorted(label for g in _groups() for label in g["labels"])


def _groups() -> tuple[dict[str, Any], ...]:
    from streamrec.catalog import kinetics_groups

    return kinetics_groups()


def categories() -> dict[str, list[str]]:
    """Parent group -> its class names."""
    return {g["name"]: list(g["labels"]) for g in _groups()}


def sport_categories() -> dict[str, list[str]]:
    """Sport group -> its class names (134 classes in all)."""
    return {g["name"]: list(g["labels"]) for g in _groups() if g["sport"]}


def sport_classes() -> list[str]:
    return sorted(label for labels in sport_categories().values() for label in labels)


def group_of(label: str) -> str:
    for name, labels in categories().items():
        if label in labels:
            return name
    raise StreamrecError(f"label: expected a Kinetics-400 class name, got {label!r}")


def sport_indices(class_names: Sequence[str]) -> list[int]:
    """Indices of the sport classes in ``class_names`` (a model's output order)."""
    sports = set(sport_classes())
    idx = [i for i, name in enumerate(class_names) if name in sports]
    if not idx:
        raise StreamrecError("--sports-only: the model's classes contain no Kinetics sport class (a custom checkpoint?)")
    return idx


def restrict(probs, indices: Sequence[int]):
    """``probs`` (``(..., K)`` scores) with the classes outside ``indices`` set to 0 and the rest
    renormalized to sum to 1: what ``--sports-only`` shows. A row whose classes in ``indices`` all
    scored 0 (underflow: the model is sure it is none of them) is spread evenly over them, a low
    score for each, never 0/0.

    Example:
        >>> import numpy as np
        >>> restrict(np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]]), [1, 2]).round(2).tolist()
        [[0.0, 0.6, 0.4], [0.0, 0.5, 0.5]]
    """
    import numpy as np

    probs = np.asarray(probs)
    masked = np.zeros_like(probs)
    masked[..., indices] = probs[..., indices]
    empty = masked.sum(axis=-1, keepdims=True) <= 0  # (..., 1)
    masked[..., indices] = np.where(empty, 1.0, masked[..., indices])
    return masked / masked.sum(axis=-1, keepdims=True)


def restrict_rows(probs, subsets: Sequence[Sequence[int] | None]):
    """``probs`` ``(B, K)`` with each row ``i`` whose ``subsets[i]`` is not ``None`` restricted to
    it (:func:`restrict`): one batch of cameras, some of them ``--sports-only``. ``probs`` itself
    is left alone.

    Example:
        >>> import numpy as np
        >>> restrict_rows(np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]), [None, [1, 2]]).round(2).tolist()
        [[0.5, 0.3, 0.2], [0.0, 0.6, 0.4]]
    """
    import numpy as np

    probs = np.asarray(probs)
    if all(s is None for s in subsets):
        return probs
    probs = probs.copy()
    for i, subset in enumerate(subsets):
        if subset is not None:
            probs[i] = restrict(probs[i], subset)
    return probs
