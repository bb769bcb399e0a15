"""``streamrec classify``: its arguments, and the run that keeps the first start lean.

This module imports no torch: on a model's first CPU start the command has the model
prepared by a child process (:mod:`streamrec.runtime.firststart`) before it imports torch itself,
so that torchvision is never loaded under the classification's own memory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from streamrec.config import check_device
from streamrec.errors import StreamrecError
from streamrec.fsutil import check_apart, check_output
from streamrec.redact import printable
from streamrec.validate import MAX_BATCH, check_weights_arg, finite_float, whole_number


EXAMPLES = """examples:
  streamrec classify demo/clips/arm_wrestling.mp4        segments and the average over the clip (--windows: every window)
  streamrec classify match.mp4 --weights model.pt --format csv --out match.csv
  streamrec classify match.mp4 --zone 0.5,0,0.5,0.5 --stride 0.5 --plot timeline.png   the top-right quarter only
"""


def add_classify_parser(sub, model_args: Callable) -> None:
    p = sub.add_parser("classify", help="classify a recorded video file: segments, timeline and average",
                       epilog=EXAMPLES)
    p.add_argument("file", help="a video file (any format FFmpeg reads)")
    model_args(p, backend_default="torch on CPU, the least memory; auto on CUDA")
    p.add_argument("--stride", type=finite_float("--stride"), default=1.0, help="seconds between windows")
    p.add_argument("--top", type=whole_number("--top", 1000), default=5, help="labels kept per window and in the average")
    p.add_argument("--batch-size", type=whole_number("--batch-size", MAX_BATCH), default=None, help="windows per forward pass (default 8 on CUDA, 1 on CPU)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format: table (the segments), json or csv (a row per window) (default: the --out "
                        "file's suffix, .csv or .json, else table)")
    p.add_argument("--windows", action="store_true", help="the table lists every window too (default: the segments only)")
    p.add_argument("--out", default=None, help="write the output here (default: stdout)")
    p.add_argument("--plot", default=None, help="write a timeline PNG here (default: none)")
    p.add_argument("--sports-only", action="store_true", help="restrict to Kinetics sport classes")
    p.add_argument("--zone", action="append", default=None, metavar="X,Y,W,H",
                   help="classify only this region: its top-left corner and size as fractions of the frame, cut out "
                        "before the model's resize and crop as serve's zones are; repeat it for a table per zone "
                        "(default: the whole frame)")
    p.set_defaults(func=cmd_classify)


FORMATS = ("table", "json", "csv")


def output_format(given: str | None, out: str | None) -> str:
    """``--format``, else the one ``--out``'s suffix names (``match.csv`` is CSV), else ``table``.

    >>> output_format(None, "match.CSV"), output_format(None, "m.json"), output_format("table", "m.csv"), output_format(None, None)
    ('csv', 'json', 'table', 'table')
    """
    if given is not None:
        return given
    suffix = os.path.splitext(out or "")[1].lower().lstrip(".")
    return suffix if suffix in ("csv", "json") else "table"


def cmd_classify(args) -> int:
    from streamrec.runtime.firststart import needs_preparing, prepare_first_starts
    from streamrec.fsutil import CACHE

    args.format = output_format(args.format, args.out)
    zones = parse_zone_args(args)
    weights, device = check_weights_arg(args.weights or "DEFAULT"), check_device(args.device or "auto")
    inputs = (args.file, weights)  # check_output compares only those that exist: DEFAULT does not
    if args.out:
        check_output("--out", args.out, inputs=inputs)
    if args.plot:
        check_output("--plot", args.plot, image=True, inputs=inputs)
    check_apart({"--out": args.out, "--plot": args.plot})
    loaded = None
    if Path(args.file).is_file():  # before torch is imported here: see streamrec.runtime.firststart
        prepare_first_starts(CACHE, [(args.model, weights)], device=device)
        if needs_preparing(CACHE, args.model, weights, device=device):  # the child failed: load here, not in
            from streamrec.runtime import prepared  # a second child, and say why once (a damaged file)

            loaded = prepared.load(args.model, weights, device=device)

    if loaded is None and len(zones) > 1 and Path(args.file).is_file():  # one model for every zone: loaded once
        from streamrec.runtime import prepared  # (random weights drawn once: the zones' scores compare)

        loaded = prepared.load(args.model, weights, device=device, child=True)
    timelines = [classify_one(args, weights, device, loaded, zone) for zone in zones]
    write_outputs(args, timelines[0] if len(timelines) == 1 else timelines)
    return 0


def parse_zone_args(args) -> list:
    """The ``--zone`` regions (``[None]``: the whole frame), refused in one line where they cannot work."""
    from streamrec.zones import ZoneConfig

    if not args.zone:
        return [None]
    several = len(args.zone) > 1
    if several and (args.format == "csv" or args.plot):
        raise StreamrecError(f"--zone: several zones give a table or JSON per zone; "
                             f"{'--format csv' if args.format == 'csv' else '--plot'} takes one --zone")
    return [ZoneConfig.parse_rect(text, name=f"zone{i + 1}" if several else "zone") for i, text in enumerate(args.zone)]


def classify_one(args, weights: str, device: str, loaded, zone):
    """One timeline of the file (of ``zone`` only, when given), with the progress bar on a terminal."""
    from streamrec.offline.classify import classify_file

    bar = _progress_bar(args.file)
    try:
        tl = classify_file(
            args.file,
            model=args.model,
            weights=weights,
            device=device,
            backend=args.backend,
            stride=args.stride,
            top=args.top,
            batch_size=args.batch_size,
            threads=args.threads,
            sports_only=args.sports_only,
            loaded=loaded,
            progress=bar.update if bar else None,
            zone=zone,
        )
    except BaseException:
        if bar:
            bar.close()
        raise
    if bar:
        bar.close(done=True)
    return tl


def write_outputs(args, tl) -> None:
    """The timeline to stdout or ``--out``, the ``--plot``, and the notes about the clip and model;
    for a list of timelines (one per ``--zone``), a table per zone or a JSON list."""
    from streamrec.fsutil import atomic_write_text
    from streamrec.offline.classify import plot_timeline

    zones = ""
    if isinstance(tl, list):
        text = ("\n".join(t.to_table(windows=args.windows) for t in tl) if args.format == "table"
                else json.dumps([t.to_dict() for t in tl], indent=1) + "\n")
        zones = f"{len(tl)} zones, each "
        tl = tl[0]  # the notes about the clip and model are the same for every zone
    else:
        text = {"table": lambda: tl.to_table(windows=args.windows), "json": lambda: tl.to_json(indent=1) + "\n",
                "csv": tl.to_csv}[args.format]()
    if args.out:
        try:
            atomic_write_text(args.out, text)
        except OSError as exc:
            raise StreamrecError(f"--out {args.out}: cannot write: {exc.strerror}") from None
        print(f"wrote {printable(args.out)} ({zones}{written(tl, args.format, args.windows)})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot:
        plot_timeline(tl, args.plot)
        print(f"wrote {args.plot} (the timeline plot: {_count(len(tl.segments), 'segment')}, "
              f"{_count(len(tl.windows), 'window')})", file=sys.stderr)
    if tl.meaningless:
        print("streamrec: --weights none: random weights, labels are meaningless", file=sys.stderr)
    if tl.padded:
        print("streamrec: the clip is shorter than one window; its last frame was repeated", file=sys.stderr)
    if tl.damage_note:
        print(f"streamrec: {tl.damage_note}", file=sys.stderr)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def written(tl, fmt: str, windows: bool) -> str:
    """What ``--out`` holds, for the line that names it."""
    if fmt == "csv":
        return f"{_count(len(tl.windows), 'row')}, one a window, with its segment"
    if fmt == "json":
        return f"JSON: {_count(len(tl.segments), 'segment')}, {_count(len(tl.windows), 'window')}"
    rows = f"{_count(len(tl.segments), 'segment')}" + (f" and {_count(len(tl.windows), 'window')}" if windows else "")
    return f"a table of {rows}"


class _progress_bar:
    """tqdm on stderr, in seconds of video out of the file's length (percent and ETA), only
    when stderr is a terminal."""

    def __new__(cls, file: str):
        if not sys.stderr.isatty():
            return None
        return super().__new__(cls)

    def __init__(self, file: str) -> None:
        from streamrec.offline.dataset import probe

        info = probe(file)
        self._total = round(info.duration_s, 1) if info is not None and info.duration_s > 0 else None
        self._bar = None  # shown from the first decoded frame on, after the model's own messages
        self._last = 0.0

    def update(self, seconds: float) -> None:
        if self._bar is None:
            from tqdm import tqdm

            fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} s [{elapsed}<{remaining}]"
            self._bar = tqdm(total=self._total, unit="s", desc="classifying", file=sys.stderr,
                             bar_format=fmt if self._total else None)
        if self._total is not None:
            seconds = min(seconds, self._total)
        if seconds - self._last >= 0.5:
            self._bar.update(seconds - self._last)
            self._last = seconds

    def close(self, done: bool = False) -> None:
        if self._bar is None:
            return
        if done and self._total is not None and self._last < self._total:
            self._bar.update(self._total - self._last)  # the file's last frames: 100 %
        self._bar.close()
