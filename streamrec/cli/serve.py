"""``streamrec serve``: the config read from the file and the command line, the address answering
at once ("preparing the model") while the models load, then the live app until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from streamrec.errors import StreamrecError

logger = logging.getLogger(__name__)


def cmd_serve(args: argparse.Namespace) -> int:
    from streamrec.config import ServeConfig, where_written
    from streamrec.configfile import load_toml

    file_values: dict[str, Any] = load_toml(args.config) if args.config else {}
    keys = ("source", "model", "weights", "device", "backend", "threads", "host", "port", "loop", "camera",
            "rtsp_transport", "stall_timeout", "open_timeout", "stride_ms", "sports_only", "token", "insecure", "db",
            "history_days", "allowed_hosts")
    cli_values = {k: getattr(args, k) for k in keys}
    config = ServeConfig.from_sources(file_values, cli_values, file_label=str(args.config))
    try:
        return _serve(args, config)
    except StreamrecError as exc:  # a source, weights, database or host the config file named: named as its key
        raise where_written(exc, file_values, cli_values, str(args.config)) from None


def preflight(config: Any, cams: list) -> None:
    """What serve refuses before its address answers (one line, exit 2, no "preparing" first): a
    camera's model that is no model's name, weights that are no weights file, a file source that is not
    there, a recording folder that cannot be written, a database that cannot
    be opened (a missing folder, a file that is no SQLite database, a URL of another kind); ``cams``:
    the config's cameras, resolved."""
    from streamrec.catalog import check_model
    from streamrec.database import Database, close_quietly
    from streamrec.live.history import default_db
    from streamrec.events.clipfiles import check_writable
    from streamrec.live.sources import SourceSpec, check_file
    from streamrec.validate import check_weights_arg

    check_weights_arg(config.weights)
    for given, cam in zip(config.all_cameras(), cams):
        if cam.model is not None:
            check_model(cam.model)
        if given.weights is not None:
            check_weights_arg(str(given.weights), f"camera {cam.name!r}: weights")
        spec = SourceSpec.of_camera(cam)
        if spec.kind == "file":
            check_file(spec)
    if config.rules and config.recording.enabled:
        check_writable(config.recording.folder)
    close_quietly(Database(config.db or default_db(), what="the history database").connect())


def _serve(args: argparse.Namespace, config: Any) -> int:
    from streamrec.fsutil import CACHE
    from streamrec.runtime.firststart import prepare_first_starts
    from streamrec.serve.starting import StopSignals, record_seconds, start_answering, stop_now

    cams = [config.resolve(c) for c in config.all_cameras()]
    preflight(config, cams)
    models = [(c.model, str(c.weights or "DEFAULT")) for c in cams]
    # the address answers at once ("preparing the model"), while the models are prepared and loaded
    starting, key = start_answering(config, models, CACHE)
    app = None
    with StopSignals(on_stuck=stop_now) as signals:  # SIGTERM or Ctrl-C meanwhile: the socket closed, exit 0
        try:
            starting.wait_for_gate()
            # a model's first CPU start in a child process, before this one imports torch: the server
            # then never holds torchvision's memory for as long as it runs; see streamrec.runtime.firststart
            prepare_first_starts(CACHE, models, device=config.device)
            from streamrec.serve.app import LiveApp

            app = LiveApp(config, listening=True)
            app.config_file = args.config  # the zones API writes its changes there
            signals.disarm()
        except BaseException:
            signals.disarm()
            starting.close()
            if not signals.fired:  # fired: even where a library caught the StopServing it raised
                raise
            if app is not None:
                app.close()
            logger.info("stopped (%s) while preparing the model", signals.fired)
            return 0
        record_seconds(CACHE, key, starting.elapsed_s())
        app.server.sock = starting.handoff()  # connections made meanwhile wait in its queue for the web server
    if signals.pending:  # a signal during the handoff, before the web server's own handlers
        app.close()
        app.server.sock.close()
        return 0
    if app.meaningless:
        print("streamrec: --weights none: random weights, every label shown is meaningless", file=sys.stderr)
    asyncio.run(app.run())
    return 0
