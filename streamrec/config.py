"""Configuration: frozen dataclasses validated at construction, read from TOML + CLI.

Precedence: built-in defaults < TOML file < command line.

Example:
    >>> cfg = ServeConfig.from_sources({"source": "clip.mp4"}, {"port": 9000})
    >>> cfg.port, cfg.host, cfg.smoothing.alpha
    (9000, '127.0.0.1', 0.4)
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any

from streamrec.errors import OptionError, StreamrecError
from streamrec.redact import control_characters, mask_credentials, printable
from streamrec.event_config import NotifyConfig, RecordingConfig, RuleConfig, check_rules
from streamrec.hosts import check_allowed_hosts
from streamrec.validate import check_types, described, unknown_keys
from streamrec.zones import ZoneConfig, alike, parse_zones, stream_key

# a camera's name travels in a one-byte length field (the preview frames' header): its UTF-8 bytes count
CAMERA_NAME_MAX_CHARS, CAMERA_NAME_MAX_BYTES = 64, 255
MAX_THREADS = 4096  # --threads: torch takes a C int
CAMERA_TIMEOUT_MIN_S = 0.1  # a camera's open_timeout and stall_timeout: shorter would reconnect without pause
CAMERA_TIMEOUT_MAX_S = 86400  # a camera's open_timeout and stall_timeout: a day at most
HEADER_TIMEOUT_MIN_S = 0.5  # header_timeout: a request's headers and body take a browser longer on a slow network
HISTORY_DAYS_MAX = 36500  # --history-days: a hundred years
BATCH_WAIT_MAX_MS = 10000  # batch_wait_ms: a worker waits at most this for more windows


def check_device(device: str) -> str:
    """``device`` when it names a device streamrec runs on (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``), else a :class:`StreamrecError`: checked before a model is loaded.

    >>> check_device("cuda:1")
    'cuda:1'
    """
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:[0-9]{1,4}", device):
        raise OptionError(("device",), f"expected auto, cpu, cuda or cuda:N, got {described(device)}")
    return device


HOLD_MAX = 10_000  # windows: more than six minutes at 25 labels a second


@dataclass(frozen=True)
class SmoothingConfig:
    """``alpha``: weight of the newest window in the EMA (1 = no smoothing).
    ``margin``: how far a challenger's smoothed score must lead the shown label's.
    ``hold``: consecutive windows the challenger must lead before it is shown.
    ``threshold``: below this smoothed score the state is "uncertain"."""

    alpha: float = 0.4
    margin: float = 0.05
    hold: int = 2
    threshold: float = 0.2

    def __post_init__(self) -> None:
        check_types(self, prefix="smoothing.")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"smoothing.alpha: expected 0 < alpha <= 1, got {self.alpha}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"smoothing.margin: expected 0 <= margin < 1, got {self.margin}")
        if not 1 <= self.hold <= HOLD_MAX:
            raise ValueError(f"smoothing.hold: expected 1 <= hold <= {HOLD_MAX}, got {self.hold}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"smoothing.threshold: expected 0 <= threshold < 1, got {self.threshold}")


RTSP_TRANSPORTS = ("tcp", "udp")
DISPLAY_FPS_MAX = 60.0  # pictures a second sent to each page
DISPLAY_WIDTH_MAX = 3840  # pixels of the page's picture (4K)


NAMES_WITHOUT_BLANKS = ("model", "backend", "host")  # a path (source, weights, db) may hold a space; these never do


def check_text(config: Any, names: tuple[str, ...], prefix: str = "") -> None:
    """The text options ``names`` of ``config`` that are set are not blank (``weights = ""`` would
    quietly mean the default weights), and ``rtsp_transport`` is one FFmpeg takes."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str) and not value.strip():
            raise StreamrecError(f"{prefix}{name}: expected a value, got {value!r}")
        if name in NAMES_WITHOUT_BLANKS and isinstance(value, str) and value != value.strip():
            raise StreamrecError(f"{prefix}{name}: expected a name without blanks around it, got {value!r}")
    transport = getattr(config, "rtsp_transport", None)
    if transport is not None and transport not in RTSP_TRANSPORTS:
        raise StreamrecError(f"{prefix}rtsp_transport: expected {' or '.join(RTSP_TRANSPORTS)}, got {described(transport)}")


def check_pretrained(model: str | None, weights: str, prefix: str = "") -> None:
    """A model without pretrained weights (tiny3d) asked for its ``DEFAULT`` ones: refused before
    anything loads, naming ``weights`` as written (``prefix``: the camera's, when it set them)."""
    from streamrec.catalog import EXTRA_MODELS

    if model in EXTRA_MODELS and str(weights).upper() == "DEFAULT":
        raise OptionError(("weights",), f"{prefix}expected a checkpoint PATH or 'none' for {model} (it has no "
                                        f"pretrained weights), got {weights!r}")


@dataclass(frozen=True)
class CameraConfig:
    """One camera. Unset options (None) take the serve-wide value."""

    name: str
    source: str
    loop: bool | None = None
    model: str | None = None
    weights: str | None = None
    rtsp_transport: str | None = None
    open_timeout: float | None = None
    stall_timeout: float | None = None
    sports_only: bool | None = None
    zones: tuple[ZoneConfig, ...] = ()  # [[cameras.zones]]: regions labelled on their own
    whole_frame: bool = True  # with zones: label the whole frame too

    def __post_init__(self) -> None:
        shown = self.name if not isinstance(self.name, str) or len(self.name) <= 40 else self.name[:40] + "..."
        check_types(self, prefix=f"camera {shown!r}: " if isinstance(self.name, str) else "[[cameras]] ")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or len(self.name) > CAMERA_NAME_MAX_CHARS \
                or set(self.name) == {"."} or control_characters(self.name):  # "." and "..": no name in a URL or a folder
            raise StreamrecError(f"camera name: expected 1-{CAMERA_NAME_MAX_CHARS} letters, digits, '-', '_' or '.' "
                                 f"(not dots alone), got {printable(repr(shown))}")
        check_text(self, ("model", "weights"), f"camera {shown!r}: ")
        for option in ("open_timeout", "stall_timeout"):  # None: serve's own
            value = getattr(self, option)
            if value is not None and not CAMERA_TIMEOUT_MIN_S <= value <= CAMERA_TIMEOUT_MAX_S:
                raise StreamrecError(f"camera {shown!r}: {option}: expected {CAMERA_TIMEOUT_MIN_S} to "
                                     f"{CAMERA_TIMEOUT_MAX_S} seconds, got {value!r}")
        size = len(self.name.encode())
        if size > CAMERA_NAME_MAX_BYTES:
            raise StreamrecError(f"camera name: expected at most {CAMERA_NAME_MAX_BYTES} bytes as UTF-8, "
                                 f"got {size} bytes: {self.name!r}")
        if not str(self.source).strip():
            raise StreamrecError(f"camera {self.name!r}: source: expected a webcam index, URL or file, got nothing")
        object.__setattr__(self, "zones", parse_zones(self.zones, camera=self.name))
        if not self.whole_frame and not self.zones:
            raise StreamrecError(f"camera {self.name!r}: whole_frame: expected true for a camera without zones "
                                 "(it would label nothing), got false")

    def streams(self) -> tuple[str | None, ...]:
        """The labelled streams of this camera: ``None`` for the whole frame, then each zone's name."""
        return ((None,) if self.whole_frame else ()) + tuple(z.name for z in self.zones)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CameraConfig":
        if not isinstance(d, dict):
            raise StreamrecError(f"[[cameras]]: expected a table with a name and a source, got {described(d)}")
        if "name" not in d or "source" not in d:
            raise StreamrecError(f"[[cameras]]: each camera needs a name and a source, got {described(d)}")
        unknown_keys(cls, d, "[[cameras]]")
        source = d["source"]  # a webcam index may be written as a number
        return cls(**{**d, "source": str(source) if type(source) is int else source})


@dataclass(frozen=True)
class ServeConfig:
    source: str | None = None
    model: str | None = None  # None: the checkpoint's model, else r2plus1d_18
    weights: str = "DEFAULT"
    device: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    loop: bool = False
    camera: str = "default"
    rtsp_transport: str = "tcp"
    open_timeout: float = 10.0
    stall_timeout: float = 5.0
    stride_ms: float = 0.0
    sports_only: bool = False  # scores renormalized over the Kinetics sport classes
    display_fps: float = 10.0
    display_width: int = 480
    token: str | None = None
    insecure: bool = False
    db: str | None = None  # activity history: SQLite path (default streamrec-history.db) or postgresql:// URL
    history_days: float | None = None  # delete history segments older than this (None: keep all)
    batch_wait_ms: float = 10.0  # dynamic batching: how long to wait for more cameras' windows
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides the bound address (DNS rebinding guard)
    header_timeout: float = 5.0  # seconds a connection has to send its request line, headers and body
    max_connections: int = 512  # open connections in all (kept under the descriptor limit too)
    max_connections_per_address: int = 64  # open connections from one peer address
    cameras: tuple[CameraConfig, ...] = ()
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    rules: tuple[RuleConfig, ...] = ()  # [[rules]]: when an activity becomes an event
    notify: NotifyConfig = field(default_factory=NotifyConfig)  # [notify.webhook], [notify.mqtt]
    recording: RecordingConfig = field(default_factory=RecordingConfig)  # [recording]: event clips

    def __post_init__(self) -> None:
        check_types(self)
        if self.host.startswith("[") and self.host.endswith("]"):  # --host [::1]: an IPv6 address as URLs write it
            object.__setattr__(self, "host", self.host[1:-1])
        object.__setattr__(self, "allowed_hosts", check_allowed_hosts(self.allowed_hosts))
        check_text(self, ("source", "model", "weights", "backend", "host", "db"))
        self._check_models()
        if not HEADER_TIMEOUT_MIN_S <= self.header_timeout <= CAMERA_TIMEOUT_MAX_S:
            raise OptionError(("header_timeout",), f"expected {HEADER_TIMEOUT_MIN_S} to {CAMERA_TIMEOUT_MAX_S} seconds "
                                                   f"(shorter cuts off every browser), got {self.header_timeout!r}")
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise StreamrecError("max_connections/max_connections_per_address: expected > 0, got "
                                 f"{self.max_connections}, {self.max_connections_per_address}")
        if not self.source and not self.cameras:
            raise OptionError(("source",), "expected a webcam index, an rtsp:// URL or a video file (or [[cameras]] in --config), got nothing")
        if not self.source and self.camera != "default":  # it names --source's camera: without one, nothing
            raise OptionError(("camera",), f"expected it only with a source (each [[cameras]] table has its own name), "
                                           f"got {described(self.camera)} and no source")
        names = [c.name for c in self.all_cameras()]
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        if dupes:
            raise StreamrecError(f"[[cameras]]: camera names must be unique, got {dupes} more than once")
        pair = alike(names)
        if pair:
            raise StreamrecError(f"[[cameras]]: expected camera names that differ in more than case or Unicode form "
                                 f"(Home Assistant and many file systems read them as one), got {pair[0]!r} and {pair[1]!r}")
        check_rules(self.rules, self.notify, names, [stream_key(c.name, z) for c in self.all_cameras() for z in c.streams()])
        if self.batch_wait_ms < 0:
            raise StreamrecError(f"batch_wait_ms: expected >= 0, got {self.batch_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise OptionError(("port",), f"expected 0..65535, got {self.port}")
        if self.stride_ms < 0:
            raise OptionError(("stride_ms",), f"expected >= 0, got {self.stride_ms}")
        if self.history_days is not None and not 0 < self.history_days <= HISTORY_DAYS_MAX:
            raise OptionError(("history_days",), f"expected > 0 and at most {HISTORY_DAYS_MAX}, got {self.history_days}")
        if self.batch_wait_ms > BATCH_WAIT_MAX_MS:
            raise StreamrecError(f"batch_wait_ms: expected at most {BATCH_WAIT_MAX_MS}, got {self.batch_wait_ms}")
        if self.token == "":
            raise OptionError(("token",), "expected visible characters without spaces (a blank or invisible token "
                                               "would let anyone in), got an empty token")
        if self.token and (any(c.isspace() for c in self.token) or control_characters(self.token)):
            raise OptionError(("token",), "expected visible characters without spaces (a blank or invisible token "
                                              f"would let anyone in), got a token with {(control_characters(self.token) or ['a space'])[0]}")
        if not 0 < self.display_fps <= DISPLAY_FPS_MAX or not 32 <= self.display_width <= DISPLAY_WIDTH_MAX:
            raise StreamrecError(f"display_fps, display_width: expected 0 < fps <= {DISPLAY_FPS_MAX} and width "
                                 f"32..{DISPLAY_WIDTH_MAX} pixels, got {self.display_fps}, {self.display_width}")
        for option in ("stall_timeout", "open_timeout"):  # every camera's, unless its table sets its own
            if not CAMERA_TIMEOUT_MIN_S <= getattr(self, option) <= CAMERA_TIMEOUT_MAX_S:
                raise OptionError((option,), f"expected {CAMERA_TIMEOUT_MIN_S} to {CAMERA_TIMEOUT_MAX_S} seconds, "
                                             f"got {getattr(self, option)!r}")
        check_device(self.device)
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise OptionError(("threads",), f"expected 1..{MAX_THREADS}, got {self.threads}")
        if not self.is_loopback and not self.token and not self.insecure:
            raise OptionError(("host",), f"binding {self.host} (not a loopback address) needs a token (--token or "
                                         "STREAMREC_TOKEN), or --insecure to serve without one")

    @classmethod
    def shown_default(cls, name: str) -> str:
        """The default of option ``name`` as ``--help`` shows it (read from the field: one owner).

        Example:
            >>> ServeConfig.shown_default("port"), ServeConfig.shown_default("stall_timeout")
            ('8000', '5')
        """
        value = getattr(cls, name)
        return f"{value:g}" if isinstance(value, float) else str(value)

    def _check_models(self) -> None:
        """The backend and each camera's weights, as far as they are known without loading anything."""
        from streamrec.catalog import BACKEND_NAMES

        if self.backend not in BACKEND_NAMES:  # the command line's choices; a file's value is read here
            raise OptionError(("backend",), f"expected one of {', '.join(BACKEND_NAMES)}, got {described(self.backend)}")
        for cam in self.all_cameras():
            check_pretrained(cam.model or self.model, cam.weights or self.weights,
                             f"camera {cam.name!r}: " if cam.weights or cam.model else "")

    def all_cameras(self) -> tuple[CameraConfig, ...]:
        """The cameras to run: ``[[cameras]]``, and ``--source`` as one more named ``camera``."""
        single = (CameraConfig(self.camera, str(self.source)),) if self.source else ()
        return tuple(self.cameras) + single

    def resolve(self, cam: CameraConfig) -> CameraConfig:
        """``cam`` with every unset option taken from the serve-wide value."""
        return replace(cam, **{f.name: getattr(self, f.name) for f in fields(cam)
                               if f.name not in ("name", "source") and getattr(cam, f.name) is None})

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def from_sources(cls, file_values: dict[str, Any], cli_values: dict[str, Any],
                     file_label: str = "config file") -> "ServeConfig":
        """Merge TOML values and (non-None) command-line values into a validated config. A bad
        value names its flag, or its key in ``file_label`` (the TOML file) when it came from there."""
        merged: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for origin, values in (("config file", file_values), ("command line", cli_values)):
            for key, val in values.items():
                if val is None:
                    continue
                spelled, key = key, key.replace("-", "_")
                if spelled != key and key in values:  # stall-timeout and stall_timeout: one would be dropped
                    raise StreamrecError(f"{origin}: {spelled!r} and {key!r} are one option; expected it once")
                if key not in names:
                    raise StreamrecError(f"{origin}: unknown option {key!r}; expected one of {', '.join(sorted(names))}")
                if key == "smoothing":
                    val = _smoothing(val, merged.get("smoothing"))
                if key == "cameras":
                    if not isinstance(val, list):
                        raise StreamrecError(f"cameras: expected [[cameras]] tables, got {type(val).__name__}")
                    val = tuple(v if isinstance(v, CameraConfig) else CameraConfig.from_dict(v) for v in val)
                if key == "allowed_hosts":
                    val = check_allowed_hosts(val)
                val = _event_table(key, val)
                merged[key] = val
        if "token" not in merged and os.environ.get("STREAMREC_TOKEN"):
            merged["token"] = os.environ["STREAMREC_TOKEN"]
        if type(merged.get("source")) is int:  # a webcam index (not a bool)
            merged["source"] = str(merged["source"])
        try:
            return cls(**merged)
        except TypeError as exc:
            raise StreamrecError(f"config: {exc}") from None
        except OptionError as exc:  # named as the user wrote them: the file's keys when all came from there
            from_file = all(file_values.get(o) is not None and cli_values.get(o) is None for o in exc.options)
            raise (exc.in_file(file_label) if from_file else exc) from None


def where_written(exc: StreamrecError, file_values: dict[str, Any], cli_values: dict[str, Any],
                  file_label: str) -> StreamrecError:
    """``exc``, whose message begins with a flag (``--weights x.pt: ...``), naming instead the key of
    the config file ``file_label`` that set the value: the file's own or a ``[[cameras]]`` table's,
    when the command line did not set it. Raised after the config was read (a file not found, weights
    that do not fit, a host that does not resolve), by code that serves ``classify`` as well.

    >>> str(where_written(StreamrecError("--source: file not found: a.mp4"), {"source": "a.mp4"}, {}, "gym.toml"))
    'gym.toml: source: file not found: a.mp4'
    >>> str(where_written(StreamrecError("--model: expected one of ..., got 'x'"), {"cameras": [{"name": "a", "model": "x"}]},
    ...                   {}, "gym.toml"))
    "gym.toml: camera 'a': model: expected one of ..., got 'x'"
    """
    flag = re.match(r"--([a-z][a-z-]*)(?=[: ])", str(exc))
    key = flag[1].replace("-", "_") if flag else ""
    if not flag or cli_values.get(key) is not None:
        return exc
    text = str(exc)

    def shown(value: Any) -> bool:  # the value as the message shows it (masked), whole: not a.mp4 in a.mp4.bak
        return re.search(re.escape(mask_credentials(str(value))) + r"(?![\w.~/-])", text) is not None

    cameras = [c for c in file_values.get("cameras") or () if isinstance(c, dict) and c.get(key) is not None]
    named = [c for c in cameras if shown(c[key])]
    top = file_values.get(key)
    if len(named) == 1:  # one camera's own value is in the message: the camera's is the bad one
        where = f"camera {named[0].get('name')!r}: {key}"
    elif top is not None and (shown(top) or not cameras):
        where = key
    elif cameras and top is None and not named:
        where = f"[[cameras]] {key}"
    else:  # the file sets it in more than one place, and the message does not tell which
        return exc
    renamed = (StreamrecError if isinstance(exc, OptionError) else type(exc))(f"{file_label}: {where}{text[flag.end():]}")
    renamed.exit_code = exc.exit_code
    return renamed


def _event_table(key: str, val: Any) -> Any:
    """``rules``, ``notify`` and ``recording`` from their TOML tables."""
    if key == "rules" and not isinstance(val, tuple):
        if not isinstance(val, list):
            raise StreamrecError(f"rules: expected [[rules]] tables, got {type(val).__name__}")
        return tuple(v if isinstance(v, RuleConfig) else RuleConfig.from_dict(v) for v in val)
    if key == "notify" and not isinstance(val, NotifyConfig):
        return NotifyConfig.from_dict(val)
    if key == "recording" and not isinstance(val, RecordingConfig):
        return RecordingConfig.from_dict(val)
    return val


def _smoothing(val: Any, base: SmoothingConfig | None) -> SmoothingConfig:
    if isinstance(val, SmoothingConfig):
        return val
    unknown_keys(SmoothingConfig, val, "[smoothing]")
    try:
        return replace(base or SmoothingConfig(), **val)
    except (TypeError, ValueError) as exc:  # SmoothingConfig's own messages name smoothing.OPTION already
        raise StreamrecError(str(exc) if str(exc).startswith("smoothing.") else f"smoothing: {exc}") from None
