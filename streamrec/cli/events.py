"""``streamrec events``: the events in the history database, and copying an event's clip out."""

from __future__ import annotations

import shutil
import sys
from contextlib import closing
from pathlib import Path

from streamrec.cli.output import local_time, write_rows
from streamrec.errors import StreamrecError
from streamrec.redact import printable
from streamrec.validate import not_a_file, whole_number

EXAMPLES = """examples:
  streamrec events                                  the newest events, as a table
  streamrec events --camera rack-1 --since -1d --format csv
  streamrec events 1764770000-1a2b3c4d --out lift.mp4 --config gym.toml   copy an event's clip out
"""
COLUMNS = ("id", "rule", "camera", "zone", "label", "start_ts", "end_ts", "peak_score", "mean_score", "state", "clip")


def add_events_parser(sub, formatter) -> None:
    p = sub.add_parser("events", help="list events (rules that fired), or copy an event's clip out",
                       epilog=EXAMPLES, formatter_class=formatter)
    p.add_argument("id", nargs="?", default=None, help="an event's id: with --out, copy its clip")
    p.add_argument("--db", default=None, help="SQLite file or postgresql:// URL (default: the --config's db, else "
                   "serve's history database)")
    p.add_argument("--camera", default=None, help="only this camera's events (default: every camera)")
    p.add_argument("--zone", default=None, help="only this zone's events; '' for whole frames only (default: all)")
    p.add_argument("--rule", default=None, help="only this rule's events (default: every rule)")
    p.add_argument("--since", default=None, help="Unix seconds, ISO time, or -10m / -2h / -1d (default: no bound)")
    p.add_argument("--until", default=None, help="as --since (default: no bound)")
    p.add_argument("--limit", type=whole_number("--limit", 10**9), default=100, help="at most this many, the newest first")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--out", default=None, help="with ID: where to write the event's clip (MP4; default: none, the event is shown)")
    p.add_argument("--config", default=None, help="the serve config whose db holds the events and whose "
                   "[recording] dir holds the clips (default: none: --db and the built-in dir)")
    p.set_defaults(func=cmd_events)


def serve_config(path: str):
    """The ``--config`` file read and checked as ``serve`` reads it (an unknown key, a value of the
    wrong type, a misplaced ``db`` are the same one-line error), without opening its cameras."""
    from streamrec.config import ServeConfig
    from streamrec.configfile import load_toml

    values = load_toml(path)
    # a reading command opens no camera and binds no address: a config naming no source gets a
    # stand-in, and a LAN config whose token comes from $STREAMREC_TOKEN at serve time is no error
    stand_ins: dict = {"insecure": True} | ({} if {"source", "cameras"} & set(values) else {"source": "0"})
    return ServeConfig.from_sources(values, stand_ins, file_label=str(path))


def history_target(db: str | None, config: str | None) -> str | None:
    """The history database a reading command opens: ``--db``, else the ``db`` of the ``--config``
    file (relative to that file, as ``serve`` reads it), else serve's default. A ``--db`` file that
    does not exist is an error; ``None`` when the config's or the default file does not exist yet
    (nothing served yet: nothing recorded)."""
    from streamrec.live.history import default_db

    target = db or (serve_config(config).db if config else None) or default_db()
    local = "://" not in target and target != ":memory:"
    if local and Path(target).exists() and not Path(target).is_file():  # a folder, a FIFO, a device
        raise StreamrecError(f"{'--db' if db else 'db'}: expected a history database file, got {target!r} "
                             f"({not_a_file(target)})")
    if "://" not in target and target != ":memory:" and not Path(target).is_file():
        if db:
            raise StreamrecError(f"--db: expected an existing history database, got {target!r} (no such file)")
        print(f"streamrec: nothing recorded yet: no history database at {printable(target)} (serve writes it)", file=sys.stderr)
        return None
    if "://" not in target and target != ":memory:":
        check_ours(target, "--db" if db else "db")
    return target


STREAMREC_TABLES = {"segments", "events", "outbox"}  # what serve writes: one of them is in any database of its


def check_ours(path: str, option: str) -> None:
    """A :class:`StreamrecError` when the SQLite file ``path`` holds tables but none of
    streamrec's: a reading command would add its tables to another program's database.
    The file is opened read-only."""
    import sqlite3
    from urllib.parse import quote

    try:
        with closing(sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:  # cannot be read now (locked, a read-only folder): the store's open says why
        return
    except sqlite3.DatabaseError as exc:  # no SQLite file at all
        raise StreamrecError(f"{option}: expected a streamrec history database, got {path!r} ({exc})") from None
    if tables and not tables & STREAMREC_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StreamrecError(f"{option}: expected a streamrec history database, got {path!r}, whose tables are "
                             f"{printable(shown)}: not streamrec's (left as they are)")


def open_store(target: str):
    from streamrec.events.store import EventStore

    return EventStore(target)


def cmd_events(args) -> int:
    from streamrec.timespan import time_span

    if args.limit < 1:
        raise StreamrecError(f"--limit: expected >= 1, got {args.limit}")
    if args.out and not args.id:
        raise StreamrecError("--out: expected an event ID before it (streamrec events ID --out clip.mp4)")
    since, until = time_span(args.since, args.until)
    target = history_target(args.db, args.config)
    if target is None:
        if args.id:
            raise StreamrecError(f"events: no event {args.id!r}")
        print_events([], args.format)
        return 0
    store = open_store(target)
    try:
        if args.id:
            return copy_clip(store, args, target)
        rows = store.query(camera=args.camera, rule=args.rule, since=since, until=until, limit=args.limit,
                           zone=args.zone)
    finally:
        store.close()
    print_events(rows, args.format)
    return 0


def copy_clip(store, args, target: str) -> int:
    """Show the event ``args.id``, or with ``--out`` copy its clip there (whole or not at all);
    ``--out`` may not be the database ``target``, the config, or in the clips' folder."""
    from streamrec.event_config import RecordingConfig

    row = store.get(args.id)
    if row is None:
        raise StreamrecError(f"events: no event {args.id!r}")
    if not args.out:
        print_events([row], args.format)
        return 0
    recording = serve_config(args.config).recording if args.config else RecordingConfig()
    if not row["clip"]:
        raise StreamrecError(f"events: event {args.id!r} has no clip (its camera had no compressed stream, or "
                             "recording was off)")
    from streamrec.events.clipfiles import ClipFolder

    folder = ClipFolder(recording.folder)
    src = folder.inside(row["clip"])
    if src is None:  # a row written by hand, or a database from elsewhere: no file outside the clips is copied
        raise StreamrecError(f"events: the clip of {args.id!r} is named {printable(row['clip'])!r} in the database, "
                             f"which leads out of {recording.folder}; expected <camera>/<file> inside it")
    if not src.is_file() and src.with_name(src.name + ".part").is_file():
        raise StreamrecError(f"events: the clip of {args.id!r} is still being recorded (until {args.id!r} ends and "
                             "its post_seconds pass); try again then")
    if src.is_file() and not src.stat().st_size:
        raise StreamrecError(f"events: the clip of {args.id!r} is an empty file ({src}): nothing to copy")
    if not src.is_file():
        raise StreamrecError(f"events: the clip of {args.id!r} is not in {recording.folder} (deleted by retention, "
                             "or another [recording] dir: give --config)")
    from streamrec.fsutil import atomic_write, check_output

    thumbnail = [p for p in [folder.inside(row["thumbnail"]) if row.get("thumbnail") else None] if p is not None]
    inputs = [src, *thumbnail, *(f"{target}{tail}" for tail in ("", "-wal", "-shm", "-journal") if "://" not in target)]
    check_output("--out", args.out, inputs=tuple(inputs + ([args.config] if args.config else [])),
                 data=recording.folder, data_is=("the [recording] dir", "the events' clips"))
    with src.open("rb") as clip:
        atomic_write(args.out, lambda fh: shutil.copyfileobj(clip, fh))  # an existing file is replaced whole
    print(f"streamrec: wrote {printable(args.out)} ({src.stat().st_size} bytes)", file=sys.stderr)
    return 0


def print_events(rows: list[dict], form: str) -> None:
    rows = [{k: r.get(k) for k in COLUMNS} for r in rows]
    if not write_rows(rows, COLUMNS, form):
        print(f"{'id':<20} {'camera':<12} {'zone':<10} {'rule':<12} {'start':<19}  {'secs':>6}  {'peak':>5}  label")
        for r in rows:
            secs = f"{r['end_ts'] - r['start_ts']:>6.1f}" if r["end_ts"] is not None else "     -"
            print(f"{r['id']:<20} {printable(r['camera']):<12} {printable(r['zone'] or '-'):<10} {printable(r['rule']):<12} {local_time(r['start_ts'])}  {secs}  "
                  f"{r['peak_score']:>5.2f}  {printable(r['label'])}")
