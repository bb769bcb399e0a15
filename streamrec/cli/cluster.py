"""``streamrec cluster``: the command line of :mod:`streamrec.cluster.app` (the parser imports
neither Ray nor torch; the command imports what it runs)."""

from __future__ import annotations

import asyncio
import logging
import os

from streamrec.config import ServeConfig
from streamrec.errors import StreamrecError
from streamrec.validate import finite_float, whole_number


EXAMPLES = """examples:
  streamrec cluster --config cameras.toml --address local          a one-machine Ray, dashboard on :8000
  streamrec cluster --config cameras.toml --address ray://head:10001 --replicas 4
  streamrec cluster --config cameras.toml --address local --no-dashboard --seconds 60 > predictions.jsonl
"""


def add_cluster_parser(sub) -> None:
    p = sub.add_parser("cluster", help="run the cameras of --config on a Ray cluster, with the dashboard; "
                                       "print predictions as JSON lines", epilog=EXAMPLES)
    p.add_argument("--config", required=True, help="TOML file with [[cameras]] (required)")
    p.add_argument("--address", default="auto", help="Ray cluster address (auto, ray://host:10001, or 'local')")
    p.add_argument("--db", default=None, help="activity history: SQLite file (default: serve's) or postgresql:// URL")
    p.add_argument("--history-days", type=finite_float("--history-days"), default=None, help="delete history older than this many days (default: keep all)")
    p.add_argument("--replicas", type=whole_number("--replicas", 1024), default=1, help="inference actors")
    p.add_argument("--seconds", type=finite_float("--seconds"), default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--host", default=None, help=f"dashboard bind address (default {ServeConfig.shown_default('host')})")
    p.add_argument("--port", type=whole_number("--port", 65535), default=None, help=f"dashboard port (default {ServeConfig.shown_default('port')}, 0 = any free)")
    p.add_argument("--token", default=None, help="access token for the page and websocket (default: $STREAMREC_TOKEN, "
                   "else none: loopback only)")
    p.add_argument("--insecure", action="store_true", default=None, help="allow a non-loopback --host without a token")
    p.add_argument("--no-dashboard", action="store_true", help="no web server: JSON lines and history only")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args) -> int:
    import sys

    from streamrec.live.history import default_db
    from streamrec.serve.core import check_port_free
    from streamrec.cluster.app import ClusterApp
    from streamrec.config import ServeConfig
    from streamrec.configfile import load_toml
    from streamrec.cluster.runner import ray_module, check_reachable
    from streamrec.live.history import HistoryStore

    if args.replicas < 1:
        raise StreamrecError(f"--replicas: expected >= 1, got {args.replicas}")
    if args.seconds is not None and args.seconds <= 0:
        raise StreamrecError(f"--seconds: expected > 0, got {args.seconds}")
    ray = ray_module()
    cli = {"host": args.host, "port": args.port, "token": args.token, "insecure": args.insecure, "db": args.db,
           "history_days": args.history_days}
    config = ServeConfig.from_sources(load_toml(args.config), cli, file_label=str(args.config))
    check_reachable(args.address)
    if args.address == "auto" and os.environ.get("RAY_ADDRESS", "").strip() not in ("", "auto", "local"):
        # Ray takes RAY_ADDRESS for auto, and would retry a dead one for minutes
        check_reachable(os.environ["RAY_ADDRESS"].strip(), name="--address auto: RAY_ADDRESS")
    if not args.no_dashboard:
        check_port_free(config.host, config.port)  # before the cluster starts
    HistoryStore(config.db or default_db()).close()  # a bad --db fails before the cluster starts (without pruning)
    connect(ray, args.address)
    try:
        app = ClusterApp(config, db=config.db or default_db(), replicas=args.replicas, lines=sys.stdout,
                         dashboard=not args.no_dashboard)
        if app.meaningless:
            print("streamrec: --weights none: random weights, every label shown is meaningless", file=sys.stderr)
        try:
            asyncio.run(app.run(args.seconds))
        finally:
            app.close()
    finally:
        ray.shutdown()
    return 0


def connect(ray, address: str) -> None:
    """``ray.init`` for ``--address``: ``local`` starts a Ray of this command's own (``None`` would join a
    cluster started on this machine, or RAY_ADDRESS's); a cluster not found is one line."""
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        if address == "auto":
            raise StreamrecError("--address auto: no running Ray cluster found (none started on this machine, and "
                                 "RAY_ADDRESS is not set); start one with `ray start --head` or use --address local") from None
        raise StreamrecError(f"--address {address}: cannot connect to a Ray cluster there ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - Ray fails in many ways (a server there that is no Ray, a Ray that cannot start)
        raise StreamrecError(f"--address {address}: Ray did not start or connect ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
