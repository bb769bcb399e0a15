"""Zones of one camera: do a zone's labels match its tile streamed alone, and what do N zones cost?

    python benchmarks/zones.py [--clips DIR] [--out-dir DIR] [--seconds 60] [--warmup 20] [--epochs 10]
                               [--zones 1,2,4,8] [--parts accuracy,cost,events] [--work-dir DIR]

Four real clips of four different actions (``../shared/clips`` or ``STREAMREC_CLIPS``) make a
2x2 mosaic (each scaled to one quarter of ``--size``, 1920x1080 by default, 25 fps, looped to
the run's length) with FFmpeg; each quarter cropped out of the mosaic is that tile alone.
tiny3d is trained on the four clips (cut into 2 s pieces: its classes are the four clips, a
model whose labels mean something, not a measure of accuracy on those actions).

- accuracy: the mosaic is streamed over RTSP (``tests/rtsp_server.py``, GStreamer, x264) to a
  real ``streamrec serve`` with four zones (one a tile) and the whole frame; then the four tiles
  are streamed at once, each its own RTSP stream and camera. Windows are paired by their place in
  the stream (the frame each ends on, from ``/healthz`` frame counts); per zone: the share of
  windows whose top label is the tile-alone one (at the nearest window), the largest score
  difference over windows ending on the same frame, and the whole frame's label as the baseline.
  The same comparison offline (``classify`` of the mosaic with the zone, and of the tile's file:
  the same windows by timestamp) isolates what the re-encode of the tile changes.
- cost: the mosaic file (decoded once per camera, shared by its zones) served with 1, 2, 4, 8
  zones and no whole frame, against the whole frame alone: labels per second per stream, the
  inference time of one batch, the server's CPU.
- events: with four zones, a rule scoped to the first zone (every label, ``min_seconds = 0``) and
  MQTT with Home Assistant discovery: the events opened per zone, and the discovery sensors.

Prints a Markdown summary and writes ``zones.md`` and ``zones.json`` (``--name``) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIPS = Path(os.environ.get("STREAMREC_CLIPS") or ROOT.parent / "shared" / "clips")
PREFERRED = ("arm_wrestling.mp4", "shooting_basketball.mp4", "cleaning_pool.mp4", "flipping_pancake.mkv")
TILES = ("tl", "tr", "bl", "br")  # the zones, as (x, y) of the mosaic's quarters
QUARTER = {"tl": (0.0, 0.0), "tr": (0.5, 0.0), "bl": (0.0, 0.5), "br": (0.5, 0.5)}
FPS = 25
SYSTEM_PY = "/usr/bin/python3"  # GStreamer's RTSP server needs Debian's python3-gi


# -- inputs ----------------------------------------------------------------------------------------
def pick_clips(folder: Path) -> list[tuple[str, Path]]:
    """Four ``(class, clip)`` of four different actions, or ``[]`` with the reason printed."""
    if not (folder / "clips.csv").is_file():
        print(f"no clips at {folder} (clips.csv missing): set STREAMREC_CLIPS or pass --clips", file=sys.stderr)
        return []
    with open(folder / "clips.csv") as fh:
        labels = {row["file"]: row["label"] for row in csv.DictReader(fh) if (folder / row["file"]).is_file()}
    order = [f for f in PREFERRED if f in labels] + [f for f in labels if f not in PREFERRED]
    picked: dict[str, str] = {}  # label -> file: the preferred clips first, one per label
    for f in order:
        picked.setdefault(labels[f], f)
    if len(picked) < 4:
        print(f"{folder}: expected clips of four different labels, got {len(picked)}", file=sys.stderr)
        return []
    return [(Path(f).stem, folder / f) for f in list(picked.values())[:4]]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def x264(crf: int = 18) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf), "-g", str(FPS), "-pix_fmt", "yuv420p"]


def build_mosaic(clips: list[Path], out: Path, size: tuple[int, int], seconds: float) -> Path:
    """The four clips (each looped, scaled to a quarter of ``size``, at 25 fps) as a 2x2 mosaic."""
    w, h = size[0] // 2, size[1] // 2
    inputs = [a for c in clips for a in ("-stream_loop", "-1", "-i", str(c))]
    scaled = ";".join(f"[{i}:v]scale={w}:{h},setsar=1,fps={FPS},format=yuv420p[v{i}]" for i in range(4))
    graph = f"{scaled};[v0][v1][v2][v3]xstack=inputs=4:layout=0_0|w0_0|0_h0|w0_h0[out]"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", "-t", f"{seconds:.2f}", *x264(), str(out))
    return out


def crop_tiles(mosaic: Path, folder: Path, size: tuple[int, int], seconds: float | None = None) -> dict[str, Path]:
    """Each quarter of the mosaic (its first ``seconds``) as a file of its own: the same frames, re-encoded."""
    w, h = size[0] // 2, size[1] // 2
    crops = ";".join(f"[s{i}]crop={w}:{h}:{int(fx * size[0])}:{int(fy * size[1])}[{t}]"
                     for i, (t, (fx, fy)) in enumerate(QUARTER.items()))
    out = {t: folder / f"tile_{t}{'' if seconds is None else '_short'}.mp4" for t in TILES}
    maps = [a for t in TILES for a in ("-map", f"[{t}]", *x264(), str(out[t]))]
    limit = [] if seconds is None else ["-t", f"{seconds:.2f}"]
    ffmpeg(*limit, "-i", str(mosaic), "-filter_complex", f"[0:v]split=4[s0][s1][s2][s3];{crops}", *maps)
    return out


def make_dataset(clips: list[tuple[str, Path]], folder: Path) -> Path:
    """DATA/<class>/<n>.mp4: each clip cut into five pieces (at most 2 s each), at 320x180 (a quarter's
    look, smaller)."""
    import av

    def seconds(clip: Path) -> float:
        with av.open(str(clip)) as c:
            return float(c.duration or 0) / av.time_base

    piece_s = min(2.0, min(seconds(c) for _, c in clips) / 5)
    for label, clip in clips:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            ffmpeg("-ss", f"{i * piece_s:.3f}", "-t", f"{piece_s:.3f}", "-i", str(clip), "-vf",
                   f"scale=320:180,setsar=1,fps={FPS}", "-an", *x264(20), str(folder / label / f"{i}.mp4"))
    return folder


def train(data: Path, out: Path, epochs: int) -> Path:
    cmd = [sys.executable, "-m", "streamrec", "train", str(data), "--model", "tiny3d", "--weights", "none",
           "--epochs", str(epochs), "--batch-size", "8", "--lr", "3e-3", "--val-split", "0.25", "--seed", "0",
           "--patience", str(epochs), "--allow-chance", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"train failed: {proc.stderr[-2000:]}")
    return out


# -- servers ---------------------------------------------------------------------------------------
@contextmanager
def rtsp(clips: dict[str, Path], base_port: int):
    """One GStreamer RTSP server per clip: ``{name: url}``."""
    procs, urls = [], {}
    try:
        for i, (name, clip) in enumerate(clips.items()):
            p = subprocess.Popen([SYSTEM_PY, str(ROOT / "tests" / "rtsp_server.py"), str(clip), "--port",
                                  str(base_port + i), "--path", f"/{name}", "--fps", str(FPS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            line = p.stdout.readline()
            if not line.startswith("READY "):
                raise SystemExit(f"the RTSP server for {clip} did not start")
            urls[name] = line.split()[1]
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def serve(cfg: Path, port: int, timeout: float = 300.0):
    """``streamrec serve --config cfg`` until the block ends; yields the process."""
    log = open(cfg.with_suffix(".log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamrec", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if health(port).get("status") != "starting":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the server did not start: {cfg.with_suffix('.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def config(folder: Path, name: str, weights: Path, port: int, cameras: list[dict], extra: list[str] = (),
           loop: bool = False) -> Path:
    """A serve config: ``cameras`` as ``{"name", "source", "zones": [(name, x, y, w, h)], "whole_frame"}``."""
    lines = [f'weights = "{weights}"', 'device = "cpu"', 'backend = "torch"', f"port = {port}",
             f"loop = {'true' if loop else 'false'}", f'db = "{folder / (name + ".db")}"', "display_fps = 1.0"]
    for cam in cameras:
        lines += ["[[cameras]]", f'name = "{cam["name"]}"', f'source = "{cam["source"]}"',
                  f'whole_frame = {"true" if cam.get("whole_frame", True) else "false"}']
        for z, x, y, w, h in cam.get("zones", ()):
            lines += ["[[cameras.zones]]", f'name = "{z}"', f"x = {x}", f"y = {y}", f"w = {w}", f"h = {h}"]
    path = folder / f"{name}.toml"
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def stream_stats(h: dict) -> dict[str, dict]:
    """``{stream key: label stats}`` from ``/healthz``: each camera's whole frame and its zones."""
    out = {}
    for cam, c in h.get("cameras", {}).items():
        if "predictions" in c:
            out[cam] = c
        for zone, z in (c.get("zones") or {}).items():
            out[f"{cam}/{zone}"] = z
    return out


def listen(port: int, seconds: float) -> tuple[list[dict], list[tuple[float, dict]]]:
    """Every prediction message for ``seconds`` (the websocket), and ``/healthz`` frame counts
    ``(wall time, {camera: frames})`` twice a second meanwhile."""
    import websockets

    samples: list[tuple[float, dict]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            t0 = time.time()
            h = health(port)
            samples.append(((t0 + time.time()) / 2, {n: c.get("frames", 0) for n, c in h["cameras"].items()}))

    async def read() -> list[dict]:
        out = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**24) as ws:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    msg = await asyncio.wait_for(ws.recv(), left)
                except asyncio.TimeoutError:
                    break
                if isinstance(msg, str) and (m := json.loads(msg)).get("type") == "prediction":
                    out.append(m)
        return out

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        msgs = asyncio.run(read())
    finally:
        stop.set()
        t.join()
    return msgs, samples


# -- accuracy --------------------------------------------------------------------------------------
def key_of(msg: dict) -> str:
    return msg["camera"] if msg.get("zone") is None else f"{msg['camera']}/{msg['zone']}"


def frame_of(msgs: list[dict], samples: list[tuple[float, dict]], camera: str) -> dict[int, dict]:
    """``{frame the window ends on: message}`` of one stream; frame 0 is the stream's first.

    At a time ``t`` with ``n`` frames counted, the stream started at ``t - n / fps`` less up to a
    frame: the median over the samples is half a frame early, so a window ending on frame ``j``
    has ``j + 1/2`` frames since that estimate, and ``floor`` gives ``j`` (the time a frame takes
    from arrival to being counted moves that, which the alignment in :func:`compare` absorbs)."""
    starts = [t - frames[camera] / FPS for t, frames in samples if frames.get(camera)]
    if not starts:
        return {}
    t0 = statistics.median(starts)
    return {math.floor((m["window"]["end_ts"] - t0) * FPS): m for m in msgs}


def scores(msg: dict) -> dict[str, float]:
    return {t["label"]: t["score"] for t in msg["top"]}


def score_diff(a: dict, b: dict) -> float:
    """The largest difference of one class's score between two messages (top 5: every class of four)."""
    sa, sb = scores(a), scores(b)
    return max(abs(sa.get(k, 0.0) - sb.get(k, 0.0)) for k in set(sa) | set(sb))


def best_shift(zone: dict[int, dict], alone: dict[int, dict], shifts=range(-2, 3)) -> int:
    """The shift of the zone's frame numbers (at most 2 frames) under which the windows ending on the
    same frame differ least (median): what the frame-count estimate of each stream's start leaves."""
    def cost(d: int) -> float:
        diffs = [score_diff(m, alone[f + d]) for f, m in zone.items() if f + d in alone]
        return statistics.median(diffs) if diffs else float("inf")

    return min(shifts, key=lambda d: (cost(d), abs(d)))


def compare(zone: dict[int, dict], alone: dict[int, dict], whole: dict[int, dict]) -> dict:
    """A zone's windows against the tile alone's: label match at the nearest window (within half
    a second), the largest score difference over windows ending on the same frame; for scale, the
    zone's median top score and how much the tile's windows one frame apart differ (median)."""
    if not alone or not zone:
        return {"windows": len(zone), "paired": 0}
    shift = best_shift(zone, alone)
    frames = sorted(alone)
    match = same = paired = base = based = 0
    diffs = []
    for f, m in zone.items():
        i = bisect.bisect_left(frames, f + shift)
        near = min(frames[max(0, i - 1):i + 1], key=lambda g: abs(g - f - shift))
        if abs(near - f - shift) > FPS // 2:
            continue
        paired += 1
        ref = alone[near]
        match += m["raw_label"] == ref["raw_label"]
        if f in whole:
            based += 1
            base += whole[f]["raw_label"] == ref["raw_label"]
        if near == f + shift:
            same += 1
            diffs.append(score_diff(m, ref))
    steps = [score_diff(m, alone[f + 1]) for f, m in alone.items() if f + 1 in alone]
    return {"windows": len(zone), "paired": paired, "shift_frames": shift,
            "median_top_score": statistics.median(m["raw_score"] for m in zone.values()),
            "tile_next_frame_diff_median": statistics.median(steps) if steps else None,
            "label_match_pct": 100.0 * match / paired if paired else None,
            "whole_frame_match_pct": 100.0 * base / based if based else None, "same_frame_pairs": same,
            "max_score_diff": max(diffs) if diffs else None,
            "median_score_diff": statistics.median(diffs) if diffs else None}


def at_rtsp_bitrate(folder: Path, mosaic: Path, tiles: dict[str, Path]) -> tuple[Path, dict[str, Path]]:
    """The mosaic and the tiles re-encoded as the RTSP server sends them: x264 ultrafast, zerolatency,
    x264enc's default 2048 kbit/s whatever the frame size, a keyframe a second."""
    def enc(src: Path) -> Path:
        out = folder / f"{src.stem}_2048k.mp4"
        ffmpeg("-i", str(src), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-b:v", "2048k",
               "-g", str(FPS), "-pix_fmt", "yuv420p", str(out))
        return out

    return enc(mosaic), {t: enc(f) for t, f in tiles.items()}


def offline(mosaic: Path, tiles: dict[str, Path], weights: Path) -> dict[str, dict]:
    """classify of the mosaic with each zone against classify of its tile's file (same windows)."""
    from streamrec.offline.classify import classify_file
    from streamrec.runtime import prepared
    from streamrec.zones import ZoneConfig

    loaded = prepared.load(None, str(weights), device="cpu")
    out = {}
    for tile, (x, y) in QUARTER.items():
        z = classify_file(mosaic, loaded=loaded, device="cpu", top=10, zone=ZoneConfig(tile, x, y, 0.5, 0.5))
        a = classify_file(tiles[tile], loaded=loaded, device="cpu", top=10)
        pairs = list(zip(z.windows, a.windows))
        diffs = [max(abs(s[k] - t.get(k, 0.0)) for k in s) for s, t in
                 (({d["label"]: d["score"] for d in p.top}, {d["label"]: d["score"] for d in q.top}) for p, q in pairs)]
        out[tile] = {"windows": len(pairs), "label_match_pct": 100.0 * sum(p.label == q.label for p, q in pairs) / len(pairs),
                     "max_score_diff": max(diffs), "median_score_diff": statistics.median(diffs)}
    return out


def accuracy(folder: Path, mosaic: Path, tiles: dict[str, Path], weights: Path, args) -> dict:
    zones = [(t, *QUARTER[t], 0.5, 0.5) for t in TILES]
    with rtsp({"mosaic": mosaic}, args.port + 10) as urls:
        cfg = config(folder, "mosaic", weights, args.port, [{"name": "mosaic", "source": urls["mosaic"], "zones": zones}])
        with serve(cfg, args.port):
            time.sleep(args.warmup)
            msgs, samples = listen(args.port, args.seconds)
    with rtsp({f"tile_{t}": tiles[t] for t in TILES}, args.port + 20) as urls:
        cfg = config(folder, "tiles", weights, args.port, [{"name": n, "source": u} for n, u in urls.items()])
        with serve(cfg, args.port):
            time.sleep(args.warmup)
            ref_msgs, ref_samples = listen(args.port, args.seconds)
    whole = frame_of([m for m in msgs if key_of(m) == "mosaic"], samples, "mosaic")
    out: dict = {"live": {}}
    for t in TILES:
        zone = frame_of([m for m in msgs if key_of(m) == f"mosaic/{t}"], samples, "mosaic")
        alone = frame_of([m for m in ref_msgs if key_of(m) == f"tile_{t}"], ref_samples, f"tile_{t}")
        out["live"][t] = compare(zone, alone, whole)
    out["messages"] = {"mosaic": len(msgs), "tiles": len(ref_msgs)}
    return out


# -- cost and events -------------------------------------------------------------------------------
def grid(n: int) -> list[tuple[str, float, float, float, float]]:
    """``n`` zones (1, 2, 4 or 8) tiling the frame: columns x rows of 1x1, 2x1, 2x2, 4x2."""
    cols, rows = {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (4, 2)}[n]
    names = TILES if n == 4 else [f"z{i}" for i in range(n)]
    return [(names[r * cols + c], c / cols, r / rows, 1 / cols, 1 / rows) for r in range(rows) for c in range(cols)]


def measure(port: int, warmup: float, seconds: float, proc) -> dict:
    import psutil

    time.sleep(warmup)
    p = psutil.Process(proc.pid)
    h0, c0, t0 = stream_stats(health(port)), p.cpu_times(), time.monotonic()
    time.sleep(seconds)
    h1, c1, t1 = stream_stats(health(port)), p.cpu_times(), time.monotonic()
    rates = {k: (h1[k]["predictions"] - h0.get(k, {}).get("predictions", 0)) / (t1 - t0) for k in h1}
    return {"labels_per_s": rates, "infer_ms_p50": {k: v.get("infer_ms_p50") for k, v in h1.items()},
            "cpu_share": (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)}


def cost(folder: Path, mosaic: Path, weights: Path, args) -> list[dict]:
    rows = []
    for n in [0, *args.zones]:  # 0: the whole frame alone
        cam = {"name": "mosaic", "source": str(mosaic), "zones": grid(n) if n else (), "whole_frame": n == 0}
        with serve(config(folder, f"cost{n}", weights, args.port, [cam], loop=True), args.port) as proc:
            r = measure(args.port, args.warmup, args.seconds, proc)
        zones = [k for k in r["labels_per_s"] if k != "mosaic"]
        per = [r["labels_per_s"][k] for k in (zones if n else ["mosaic"])]
        rows.append({"zones": n, "streams": len(zones) if n else 1, "labels_per_s_per_stream": statistics.mean(per) if per else 0.0,
                     "infer_ms_p50": statistics.median([v for v in r["infer_ms_p50"].values() if v] or [0.0]),
                     "cpu_share": r["cpu_share"], "raw": r})
    return rows


def events(folder: Path, mosaic: Path, weights: Path, classes: list[str], args) -> dict:
    """Four zones, a rule scoped to ``tl`` and MQTT discovery: events per zone, discovery sensors.
    Where serve refuses ``zones`` in a rule, the same run without it (a whole-frame rule) says the rest."""
    try:
        return events_run(folder, mosaic, weights, classes, args, scoped=True)
    except SystemExit as exc:  # the config was refused: say what is missing, measure what exists
        out = events_run(folder, mosaic, weights, classes, args, scoped=False)
        return {"missing": str(exc).splitlines()[-1], **out}


def events_run(folder: Path, mosaic: Path, weights: Path, classes: list[str], args, *, scoped: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import Broker, Subscriber  # mosquitto and a paho client, as the tests use them

    broker = Broker(folder)
    broker.start()
    rule = ["[[rules]]", 'name = "tl only"', f"labels = {json.dumps(classes)}", *(['zones = ["tl"]'] if scoped else []),
            "min_score = 0.0", "min_seconds = 0", "end_seconds = 2", "cooldown_seconds = 0",
            "[notify.mqtt]", f'url = "mqtt://127.0.0.1:{broker.port}"', "homeassistant_discovery = true"]
    cam = {"name": "mosaic", "source": str(mosaic), "zones": grid(4), "whole_frame": False}
    cfg = config(folder, "events" if scoped else "events-unscoped", weights, args.port, [cam], rule, loop=True)
    try:
        with serve(cfg, args.port):
            time.sleep(args.warmup + args.seconds)
            sub = Subscriber(broker, "homeassistant/#")
            time.sleep(2.0)
            sub.close()
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/api/events", timeout=10) as r:
                rows = json.loads(r.read())["events"]
    finally:
        broker.stop()
    by_zone: dict[str, int] = {}
    for e in rows:
        by_zone[str(e.get("zone"))] = by_zone.get(str(e.get("zone")), 0) + 1
    return {"events_by_zone": by_zone, "discovery_sensors": sorted({t for t, _, _ in sub.messages if t.endswith("/config")})}


# -- report ----------------------------------------------------------------------------------------
def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def report(result: dict) -> str:
    lines = []
    acc = result.get("accuracy")
    if acc:
        lines += ["Live (RTSP): a zone of the mosaic against its tile streamed alone", "",
                  "| zone | windows | paired | label match % | same-frame pairs | max score diff | median | "
                  "whole frame's label match % | top score p50 | tile, next frame's diff p50 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for t, r in acc["live"].items():
            lines.append(f"| {t} | {r['windows']} | {r['paired']} | {fmt(r.get('label_match_pct'))} | "
                         f"{r.get('same_frame_pairs', 0)} | {fmt(r.get('max_score_diff'), '.3f')} | "
                         f"{fmt(r.get('median_score_diff'), '.3f')} | {fmt(r.get('whole_frame_match_pct'))} | "
                         f"{fmt(r.get('median_top_score'), '.3f')} | {fmt(r.get('tile_next_frame_diff_median'), '.4f')} |")
        for key, what in (("offline", "CRF 18"), ("offline_rtsp_bitrate", "2048 kbit/s each, as the RTSP server")):
            lines += ["", f"Offline, files at {what} (classify --zone of the mosaic against classify of the tile)", "",
                      "| zone | windows | label match % | max score diff | median |", "|---|---|---|---|---|"]
            for t, r in acc.get(key, {}).items():
                lines.append(f"| {t} | {r['windows']} | {fmt(r['label_match_pct'])} | {r['max_score_diff']:.3f} | "
                             f"{r['median_score_diff']:.3f} |")
        lines.append("")
    if result.get("cost"):
        base = result["cost"][0]
        lines += ["| zones | labels/s per stream | all streams | batch inference p50 (ms) | x N whole-frame windows | "
                  "CPU, % of a core | CPU ms per label |", "|---|---|---|---|---|---|---|"]
        for r in result["cost"]:
            ratio = (r["infer_ms_p50"] / (max(r["zones"], 1) * base["infer_ms_p50"])) if base["infer_ms_p50"] else None
            total = r["labels_per_s_per_stream"] * r["streams"]
            lines.append(f"| {r['zones'] or 'whole frame'} | {r['labels_per_s_per_stream']:.2f} | {total:.2f} | "
                         f"{r['infer_ms_p50']:.1f} | {fmt(ratio, '.2f')} | {100 * r['cpu_share']:.0f} | "
                         f"{fmt(1e3 * r['cpu_share'] / total if total else None)} |")
        lines.append("")
    if "events" in result:
        e = result["events"]
        if "missing" in e:
            lines.append(f"A rule scoped to a zone was refused ({e['missing']}); the same rule on the whole frame "
                         f"(none here: whole_frame = false): events by zone {json.dumps(e['events_by_zone'])}; "
                         f"Home Assistant discovery sensors: {len(e['discovery_sensors'])}")
        else:
            lines.append(f"Events of the rule scoped to zone tl, by zone: {json.dumps(e['events_by_zone'])}; "
                         f"Home Assistant discovery sensors: {len(e['discovery_sensors'])}")
    return "\n".join(lines) + "\n"


def inputs(folder: Path, clips: list[tuple[str, Path]], size: tuple[int, int], args) -> tuple[Path, Path]:
    """The mosaic and the trained model in ``folder``, made unless there (``--work-dir`` keeps them)."""
    mosaic, weights = folder / "mosaic.mp4", folder / "model.pt"
    if not mosaic.is_file():  # an RTSP run reads one play of the file (a serve starts in < 90 s)
        build_mosaic([c for _, c in clips], mosaic.with_suffix(".part.mp4"), size, args.warmup + args.seconds + 90)
        mosaic.with_suffix(".part.mp4").rename(mosaic)
    if not weights.is_file():
        shutil.rmtree(folder / "data", ignore_errors=True)
        train(make_dataset(clips, folder / "data"), weights, args.epochs)
    return mosaic, weights


def run(args) -> dict:
    clips = pick_clips(Path(args.clips))
    if not clips:
        return {"skipped": f"no clips of four different labels at {args.clips}"}
    parts = set(args.parts.split(","))
    size = tuple(int(v) for v in args.size.split("x"))
    folder = Path(args.work_dir or tempfile.mkdtemp(prefix="zones-"))
    folder.mkdir(parents=True, exist_ok=True)
    mosaic, weights = inputs(folder, clips, size, args)
    result: dict = {"clips": [str(c) for _, c in clips], "size": list(size), "seconds": args.seconds,
                    "warmup": args.warmup, "epochs": args.epochs}
    if "accuracy" in parts:
        result["accuracy"] = accuracy(folder, mosaic, crop_tiles(mosaic, folder, size), weights, args)
        short = folder / "mosaic_short.mp4"  # offline: the first 30 s are enough windows
        ffmpeg("-t", "30", "-i", str(mosaic), "-c", "copy", str(short))
        tiles = crop_tiles(mosaic, folder, size, 30.0)
        result["accuracy"]["offline"] = offline(short, tiles, weights)
        result["accuracy"]["offline_rtsp_bitrate"] = offline(*at_rtsp_bitrate(folder, short, tiles), weights)
    if "cost" in parts:
        result["cost"] = cost(folder, mosaic, weights, args)
    if "events" in parts:
        result["events"] = events(folder, mosaic, weights, [label for label, _ in clips], args)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default=str(CLIPS), help="the real clips' folder (default ../shared/clips)")
    ap.add_argument("--out-dir", default=None, help="write NAME.md and NAME.json here (default: print only)")
    ap.add_argument("--name", default="zones", help="the output files' name, without suffix")
    ap.add_argument("--size", default="1920x1080", help="the mosaic's size")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--zones", default="1,2,4,8", help="zone counts of the cost runs")
    ap.add_argument("--parts", default="accuracy,cost,events")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--work-dir", default=None, help="keep the mosaic, tiles and model here, reused by the next run "
                                                     "(default: a new temporary folder)")
    args = ap.parse_args(argv)
    args.zones = [int(v) for v in args.zones.split(",")]
    result = run(args)
    text = report(result) if "skipped" not in result else f"skipped: {result['skipped']}\n"
    print(text, end="")
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.md").write_text(text)
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
