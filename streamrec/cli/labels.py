"""``streamrec labels``: the Kinetics-400 classes and their groups, searchable."""

from __future__ import annotations

import json
import sys

from streamrec.errors import StreamrecError
from streamrec.models.kinetics import categories, classes, sport_categories

EXAMPLES = """examples:
  streamrec labels wrest            classes or groups containing "wrest"
  streamrec labels gym              the 18 classes of the "gym and fitness" group, and any class naming gym
  streamrec labels --sports --json  sport classes by sport group, as JSON
"""


def add_labels_parser(sub, formatter) -> None:
    p = sub.add_parser("labels", help="list the Kinetics-400 classes and their groups", epilog=EXAMPLES,
                       formatter_class=formatter)
    p.add_argument("text", nargs="?", default=None,
                   help="only classes whose name or group name contains this text (any case; default: all)")
    p.add_argument("--sports", action="store_true", help="only sport classes, with their sport group")
    p.add_argument("--group", default=None, help="only this group (default: every group)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_labels)


def matching(groups: dict[str, list[str]], text: str) -> dict[str, list[str]]:
    """The classes of ``groups`` whose name or group name contains ``text`` (any case).

    Example:
        >>> matching({"gym and fitness": ["squat"], "martial arts": ["arm wrestling"]}, "GYM")
        {'gym and fitness': ['squat']}
        >>> matching({"gym and fitness": ["squat"], "martial arts": ["arm wrestling"]}, "wrest")
        {'martial arts': ['arm wrestling']}
    """
    wanted = text.casefold()
    return {g: hits for g, labels in groups.items()
            if (hits := labels if wanted in g.casefold() else [x for x in labels if wanted in x.casefold()])}


def cmd_labels(args) -> int:
    groups = sport_categories() if args.sports else categories()
    if args.group is not None:
        if args.group not in categories():
            raise StreamrecError(f"--group: expected one of {', '.join(categories())}, got {args.group!r}")
        if args.group not in groups:
            raise StreamrecError(f"--group {args.group!r} is not a sport group; drop --sports")
        groups = {args.group: groups[args.group]}
    names = classes()
    if args.text is not None:  # "wrest" -> arm wrestling, wrestling; "gym" -> the gym and fitness group
        groups = matching(groups, args.text)
        found = {x for labels in groups.values() for x in labels}
        names = [x for x in names if x in found]
        if not groups:
            print(f"streamrec: no {'such ' if args.sports or args.group else ''}Kinetics-400 class or group contains "
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
