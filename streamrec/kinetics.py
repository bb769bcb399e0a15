"""Kinetics-400 class names and their groups (``streamrec labels``).

Class names come from torchvision's weights meta. The grouping (each class in exactly
one parent group; sport groups flagged) is data shipped in
``streamrec/data/kinetics400_groups.json``.

Example:
    >>> from streamrec import kinetics
    >>> len(kinetics.classes()), len(kinetics.sport_classes())
    (400, 134)
    >>> kinetics.group_of("playing tennis")
    'racquet and bat sports'
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from .errors import StreamrecError


def classes() -> list[str]:
    """The 400 Kinetics class names, in the order of the models' outputs."""
    from .models import kinetics_classes

    return kinetics_classes()


@lru_cache(maxsize=1)
def _groups() -> tuple[dict[str, Any], ...]:
    data = json.loads(resources.files("streamrec").joinpath("data/kinetics400_groups.json").read_text())
    return tuple(data["groups"])


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
    renormalized to sum to 1: what ``--sports-only`` shows.

    Example:
        >>> import numpy as np
        >>> restrict(np.array([[0.5, 0.3, 0.2]]), [1, 2]).round(2).tolist()
        [[0.0, 0.6, 0.4]]
    """
    import numpy as np

    probs = np.asarray(probs)
    masked = np.zeros_like(probs)
    masked[..., indices] = probs[..., indices]
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


def add_labels_parser(sub) -> None:
    p = sub.add_parser("labels", help="list the Kinetics-400 classes and their groups")
    p.add_argument("text", nargs="?", default=None, help="only classes containing this text (any case)")
    p.add_argument("--sports", action="store_true", help="only sport classes, with their sport group")
    p.add_argument("--group", default=None, help="only this group")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_labels)


def cmd_labels(args) -> int:
    groups = sport_categories() if args.sports else categories()
    if args.group is not None:
        if args.group not in categories():
            raise StreamrecError(f"--group: expected one of {', '.join(categories())}, got {args.group!r}")
        if args.group not in groups:
            raise StreamrecError(f"--group {args.group!r} is not a sport group; drop --sports")
        groups = {args.group: groups[args.group]}
    names = classes()
    if args.text is not None:  # "wrest" -> arm wrestling, wrestling
        wanted = args.text.casefold()
        groups = {g: hits for g, labels in groups.items() if (hits := [x for x in labels if wanted in x.casefold()])}
        names = [x for x in names if wanted in x.casefold()]
        if not groups:
            print(f"streamrec: no {'such ' if args.sports or args.group else ''}Kinetics-400 class contains "
                  f"{args.text!r}", file=sys.stderr)
            return 1
    if args.json:
        json.dump(groups if (args.sports or args.group) else {"classes": names, "groups": groups}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for name, labels in groups.items():
            for label in labels:
                sys.stdout.write(f"{label}\t{name}\n")
    return 0
