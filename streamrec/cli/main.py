"""The ``streamrec`` command line. ``print`` lives here and nowhere else.

Every user error ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import logging
import sys
from typing import Any, Callable, Iterable, Sequence

from streamrec import __version__
from streamrec.errors import StreamrecError
from streamrec.redact import one_line_logs, printable
from streamrec.validate import MAX_BATCH, finite_float, not_a_file, whole_number
from streamrec.catalog import BACKEND_NAMES, DEFAULT_MODEL, MODEL_NAMES
from streamrec.config import ServeConfig
from streamrec.fsutil import DEMO_CLIP, atomic_write_text, check_output
from streamrec.cli.serve import cmd_serve

logger = logging.getLogger("streamrec")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help; the examples at the end kept as written. An option
    whose default is None (or a switch, off by default) says in its own text what that means,
    instead of "(default: None)"; so does a text that names its default already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.nargs == 0 or "default" in text:  # nargs 0: a switch
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, with one-line errors, and an option's value that starts with ``-`` and a digit
    (``--since -1d``, ``--lr -1``) taken as its value, as ``--since=-1d`` is: argparse itself
    reads ``-1d`` as an unknown option."""

    def __init__(self, *args: Any, formatter_class: type = HelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        self.value_options: set[str] = set()  # the long and short names of the options that take one value

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.nargs in (None, "?"):
            self.value_options.update(action.option_strings)
        return action

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_known_args(join_dash_values(self.value_options, sys.argv[1:] if args is None else args),
                                        namespace)

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        # "argument --port: --port: expected ...": a type's own message names its option already
        said = re.fullmatch(r"argument (\S+): (\1: .*)", message, flags=re.S)
        raise StreamrecError(f"{self.prog}: {said.group(2) if said else message}")


def numeric_start(text: str) -> bool:
    """Whether ``text`` (a word less its leading ``-``) reads as a number's start, not an option's name."""
    return text[0].isdigit() or text[0] == "." or text.lower() in ("inf", "infinity", "nan")


def join_dash_values(options: set[str], argv: Sequence[str]) -> list[str]:
    """``argv`` with each value-taking option in ``options`` (or its unambiguous ``--`` prefix, as
    argparse accepts) that is followed by a negative number's form (``-<digit>...``, ``-.5``, ``-inf``,
    ``-nan``) joined to it with ``=``: its value, checked as the option's own.

    Example:
        >>> join_dash_values({"--since", "--camera", "-n"}, ["--since", "-1d", "--camera", "a", "--sin", "-2h", "-n", "-1"])
        ['--since=-1d', '--camera', 'a', '--sin=-2h', '-n-1']
    """
    def takes_value(word: str) -> bool:
        if word in options:
            return True
        hits = {o for o in options if o.startswith("--") and o.startswith(word)} if word.startswith("--") else set()
        return len(hits) == 1

    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return out + words[i:]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if len(nxt) > 1 and nxt[0] == "-" and numeric_start(nxt[1:]) and takes_value(word):
            out.append(f"{word}={nxt}" if word.startswith("--") else word + nxt)  # -x-1: a short option's value
            i += 2
            continue
        out.append(word)
        i += 1
    return out


SERVE_EXAMPLES = """examples:
  streamrec serve --source 0                             webcam 0, the page at http://127.0.0.1:8000/
  streamrec serve --source demo/clips/arm_wrestling.mp4 --loop
  streamrec serve --source rtsp://cam.local/stream --host 0.0.0.0 --token s3cret --weights model.pt
"""
BENCH_EXAMPLES = """examples:
  streamrec bench                                        r2plus1d_18: stage costs and backends, report in bench.json
  streamrec bench --models r2plus1d_18,s3d --device cuda --out gpu.json
  streamrec bench --models tiny3d --batches 1,4 --no-int8 --json
"""
HISTORY_EXAMPLES = """examples:
  streamrec history --since -1h                          the last hour's segments, every camera
  streamrec history --camera door --since 2026-01-31T08:00 --until 2026-01-31T18:00
  streamrec history --db postgresql://user@db/streamrec --format csv --limit 100
"""


D = ServeConfig.shown_default  # --help's defaults are the config's


def _positive_float(name: str) -> Callable[[str], float]:
    return finite_float(name, positive=True)


def _model_args(p: argparse.ArgumentParser, *, backend_default: str | None = None) -> None:
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help=f"video classifier (default {DEFAULT_MODEL}, or the checkpoint's)")
    p.add_argument("--weights", default=None, help="DEFAULT (Kinetics-400 from the torch hub cache or download), PATH, "
                   f"or none (random; labels meaningless) (default {D('weights')})")
    p.add_argument("--device", default=None, help=f"auto | cpu | cuda (default {D('device')}: cuda when there is one)")
    p.add_argument("--backend", default=None, choices=BACKEND_NAMES, help=f"inference backend (default "
                   f"{backend_default or D('backend')}; auto: the fastest measured on this machine, cached)")
    p.add_argument("--threads", type=whole_number("--threads", 10**9), default=None, help="CPU threads for inference (default: cores - 1, at least 1)")


def _add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="recognize a live source and serve the page", epilog=SERVE_EXAMPLES)
    s.add_argument("--source", default=None, help="webcam index, rtsp://|http(s):// URL, or video file "
                   "(required unless --config has [[cameras]])")
    _model_args(s)
    s.add_argument("--host", default=None, help=f"bind address (default {D('host')})")
    s.add_argument("--port", type=whole_number("--port", 65535), default=None, help=f"HTTP/WebSocket port (default {D('port')}, 0 = any free)")
    s.add_argument("--loop", action="store_true", default=None, help="restart a file at its end (default: stop there)")
    s.add_argument("--config", default=None, help="TOML file with any of these options (the command line wins; default: none)")
    s.add_argument("--camera", default=None, help=f"camera name carried in every message (default {D('camera')!r})")
    s.add_argument("--rtsp-transport", choices=("tcp", "udp"), default=None, help=f"how RTSP carries video (default {D('rtsp_transport')})")
    s.add_argument("--stall-timeout", type=_positive_float("--stall-timeout"), default=None, help=f"seconds without a frame before reconnecting (default {D('stall_timeout')})")
    s.add_argument("--open-timeout", type=_positive_float("--open-timeout"), default=None, help=f"seconds to connect to a network source (default {D('open_timeout')})")
    s.add_argument("--stride-ms", type=finite_float("--stride-ms"), default=None, help=f"minimum time between labels (default {D('stride_ms')}: as fast as the model runs)")
    s.add_argument("--sports-only", action="store_true", default=None, help="restrict labels to Kinetics sport classes, renormalized")
    s.add_argument("--token", default=None, help="access token for the page and websocket (default: $STREAMREC_TOKEN, "
                   "else none: loopback only)")
    s.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=None, metavar="NAME[:PORT]",
                   help="a Host name to serve besides the bound address, e.g. behind a proxy (repeatable; default: none)")
    s.add_argument("--insecure", action="store_true", default=None, help="allow a non-loopback --host without a token")
    s.add_argument("--db", default=None, help="activity history: SQLite file (default ~/.local/share/streamrec/history.db) or postgresql:// URL")
    s.add_argument("--history-days", type=finite_float("--history-days"), default=None, help="delete history older than this many days "
                                                                     "(default: keep all)")
    s.set_defaults(func=cmd_serve)  # streamrec.cli.serve


def _add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="measure pipeline stages and backends on this machine", epilog=BENCH_EXAMPLES)
    b.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated model names")
    b.add_argument("--clip", default=None, help="clip for stage costs (default: the shipped demo/clips/arm_wrestling.mp4)")
    b.add_argument("--clips", default=None,
                   help="folder of clips for backend agreement and int8 calibration (default: $STREAMREC_CLIPS, "
                   "else ../shared/clips beside the repository if present, else demo/clips)")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda")
    b.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,2,4,8 on CPU; 1..32 on GPU)")
    b.add_argument("--no-int8", action="store_true", help="skip the int8 (quantized) backend")
    b.add_argument("--out", default="bench.json", help="write the full report here (JSON)")
    b.add_argument("--json", action="store_true", help="print the full report as JSON instead of the Markdown summary")
    b.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamrec", description="Real-time video action recognition.")
    parser.add_argument("--version", action="version", version=f"streamrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_serve_parser(sub)

    # every parser below is built without importing torch (tested): a command imports what it runs
    from streamrec.cli.classify import add_classify_parser
    from streamrec.cli.train import add_parsers as add_train_parsers
    from streamrec.cli.cluster import add_cluster_parser
    from streamrec.cli.labels import add_labels_parser

    add_classify_parser(sub, _model_args)
    add_labels_parser(sub, HelpFormatter)
    add_train_parsers(sub, _model_args)
    _add_bench_parser(sub)
    add_cluster_parser(sub)
    from streamrec.cli.events import add_events_parser

    add_events_parser(sub, HelpFormatter)
    h = sub.add_parser("history", help="read the activity history", epilog=HISTORY_EXAMPLES)
    h.add_argument("--db", default=None, help="SQLite file or postgresql:// URL (default: the --config's db, else "
                   "serve's default)")
    h.add_argument("--config", default=None, help="the serve config whose db to read (default: none)")
    h.add_argument("--camera", default=None, help="only this camera's segments (default: every camera)")
    h.add_argument("--zone", default=None, help="only this zone's segments; '' for whole frames only (default: all)")
    h.add_argument("--since", default=None, help="Unix seconds, ISO time, or -10m / -2h / -1d (default: the oldest)")
    h.add_argument("--until", default=None, help="like --since (default: now)")
    h.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    h.add_argument("--limit", type=whole_number("--limit", 10**9), default=None, help="only the newest N segments (default: all)")
    h.set_defaults(func=cmd_history)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from streamrec.offline.bench import check_clips, markdown, run
    from streamrec.runtime.classifier import resolve_device

    clip = Path(args.clip) if args.clip else DEMO_CLIP
    if not clip.is_file():
        raise StreamrecError(f"--clip: expected a video file, got {clip} ({not_a_file(clip)})")
    from streamrec.offline.dataset import video_files

    # without --clips: $STREAMREC_CLIPS, else the folder of clips beside the repository, else the demo clip's
    beside = DEMO_CLIP.parents[3] / "shared" / "clips"
    folder = Path(os.environ.get("STREAMREC_CLIPS") or (beside if beside.is_dir() else DEMO_CLIP.parent))
    clips = video_files([args.clips]) if args.clips else video_files([folder]) if folder.is_dir() else []
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:  # before any model is measured
        raise StreamrecError(f"--models: expected names from {', '.join(MODEL_NAMES)}, got {', '.join(map(repr, unknown))}")
    check_output("--out", args.out, inputs=(clip, *clips))
    dev = resolve_device(args.device)
    if args.batches:
        try:
            batches = [whole_number("--batches", MAX_BATCH)(b) for b in args.batches.split(",")]
        except argparse.ArgumentTypeError:
            batches = []
        if not batches or min(batches) < 1:
            raise StreamrecError(f"--batches: expected comma-separated batch sizes 1..{MAX_BATCH}, got {args.batches[:60]!r}")
    else:
        batches = [1, 2, 4, 8, 16, 32] if dev.type == "cuda" else [1, 2, 4, 8]
    check_clips(clip, clips)
    report = run(models=models, clip=clip, clips=clips, device=args.device, batches=batches, int8=not args.no_int8)
    print(json.dumps(report, indent=1, default=str) if args.json else markdown(report))
    atomic_write_text(args.out, json.dumps(report, indent=1, default=str))
    print(f"\nfull report: {args.out}", file=sys.stderr)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from contextlib import closing

    from streamrec.cli.events import history_target
    from streamrec.live.history import HistoryStore
    from streamrec.timespan import time_span

    since, until = time_span(args.since, args.until)
    if args.limit is not None and args.limit < 1:
        raise StreamrecError(f"--limit: expected >= 1, got {args.limit}")
    target = history_target(args.db, args.config)
    if target is None:
        _print_history([], args.format)
        return 0
    store = HistoryStore(target)
    try:  # every matching segment (or the newest --limit), streamed: nothing cut off unsaid
        with closing(store.rows(camera=args.camera, since=since, until=until, limit=args.limit,
                                zone=args.zone)) as rows:
            _print_history(rows, args.format)
    finally:
        store.close()
    return 0


def _print_history(rows: Iterable[dict[str, Any]], form: str) -> None:
    from streamrec.cli.output import local_time, write_rows
    from streamrec.live.history import COLUMNS

    if not write_rows(rows, COLUMNS, form):
        print(f"{'camera':<16} {'zone':<12} {'start':<19}  {'end':<19}  {'secs':>6}  {'mean':>5}  {'peak':>5}  label")
        for r in rows:
            print(f"{printable(r['camera']):<16} {printable(r['zone'] or '-'):<12} {local_time(r['start'])}  {local_time(r['end'])}  "
                  f"{r['end'] - r['start']:>6.1f}  {r['mean_score']:>5.2f}  {r['peak_score']:>5.2f}  {printable(r['label'])}")


BLANK_MEANS = ("zone", "token")  # '' means something (the whole frame's rows alone), or has its own check
POSITIONALS = ("id", "file", "text", "data", "folder", "checkpoint")  # the commands' arguments, named as --help names them


def check_blank(args: argparse.Namespace) -> None:
    """No option or argument given as empty text (``--weights ""`` from an unset shell variable):
    it would silently mean the default, a different model, database or file than the one meant."""
    for name, value in vars(args).items():
        if isinstance(value, list) and name not in BLANK_MEANS:  # nargs="+": --clips "" would be the current folder
            value = next((v for v in value if isinstance(v, str) and not v.strip()), None)
        if isinstance(value, str) and not value.strip() and name not in BLANK_MEANS:
            shown = name.upper() if name in POSITIONALS else "--" + name.replace("_", "-")
            raise StreamrecError(f"{shown}: expected a value, got {value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named with the command they were given to (argparse names the top parser)
            raise StreamrecError(f"streamrec {args.command}: unrecognized arguments: {printable(' '.join(extra))} "
                                 f"(see streamrec {args.command} --help)")
        check_blank(args)
        before = list(logging.getLogger().handlers)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        one_line_logs(before)
        for noisy in ("websockets", "libav"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return int(args.func(args) or 0)
    except StreamrecError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streamrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a write that failed after the checks (disk full, folder removed): one line, no traceback
        logger.debug("OSError", exc_info=True)
        where = f"{printable(exc.filename)}: " if exc.filename else ""
        print(f"streamrec: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def entry() -> None:
    """Console-script entry point.

    After ``serve`` has shut down cleanly (threads joined, camera and sockets closed) the
    process exits at once: the CPython/torch module teardown alone is slow enough to
    break the "stopped within 2 s of SIGTERM" promise, while holding nothing.
    """
    rc = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
