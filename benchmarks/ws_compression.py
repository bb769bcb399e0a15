"""What websockets' per-message deflate costs the server that feeds the dashboards.

    python benchmarks/ws_compression.py [--clients 20] [--seconds 20] [--rounds 2]

The real :class:`streamrec.serve.server.WebServer` and :class:`~streamrec.serve.server.Hub` publish what a
single-camera dashboard gets: 10 preview JPEGs a second (480 px wide, 50 different frames of
``arm_wrestling.mp4`` in turn, encoded once by ``encode_preview``) and 2.5 prediction and 1
status JSON messages a second. ``--clients`` websocket clients, in a separate low-priority
process, read everything and ask for compression as browsers do. The server's CPU time
(``time.process_time`` of its process, with no model running) is measured with
``compression="deflate"`` (websockets' default) and ``None``, in alternating rounds, and so
is what the clients received; what deflate would save on the wire is computed from the same
message sequence. Prints one line per round and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.fsutil import DEMO_CLIP  # noqa: E402

CLIENTS = r"""
import asyncio, json, sys, time
import websockets

async def one(port, seconds):
    got = {"messages": 0, "bytes": 0}
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**22) as ws:  # compression: websockets' default
        got["deflate"] = any(type(e).__name__ == "PerMessageDeflate" for e in ws.protocol.extensions)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                m = await asyncio.wait_for(ws.recv(), left)
            except asyncio.TimeoutError:
                break
            got["messages"] += 1
            got["bytes"] += len(m)
    return got

async def main(port, n, seconds):
    return await asyncio.gather(*(one(port, seconds) for _ in range(n)))

print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))))
"""


def frames(n: int = 50) -> list[bytes]:
    from streamrec.serve.preview import encode_preview
    from streamrec.live.sources import SourceSpec, open_source

    src = open_source(SourceSpec.parse(str(DEMO_CLIP)))
    out = []
    try:
        for rgb, _ in src.frames():
            out.append(encode_preview(rgb, 480))
            if len(out) == n:
                break
    finally:
        src.close()
    return out


def message(seq: int) -> str:
    """A prediction message the size of a real one (top 5 of Kinetics labels)."""
    top = [{"label": f"playing basketball {i}", "score": round(0.3 / (i + 1), 5)} for i in range(5)]
    return json.dumps({"type": "prediction", "seq": seq, "label": top[0]["label"], "score": 0.31, "raw_label": top[0]["label"],
                       "raw_score": 0.3, "uncertain": False, "top": top,
                       "window": {"start_ts": 1764100000.0 + seq, "end_ts": 1764100001.0 + seq, "frames": 16},
                       "infer_ms": 401.2, "latency_ms": 403.1, "capture_fps": 28.0, "camera": "default", "meaningless": False})


async def one_round(compression: str | None, jpegs: list[bytes], clients: int, seconds: float) -> dict:
    from streamrec.serve.preview import frame_message
    from streamrec.serve.hub import Hub
    from streamrec.serve.server import WebServer

    hub = Hub()
    server = WebServer(hub, host="127.0.0.1", port=0, routes={}, compression=compression)
    await server.start()
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENTS, str(server.port), str(clients), str(seconds),
                                                stdout=subprocess.PIPE, preexec_fn=lambda: os.nice(19))
    while len(hub.clients) < clients:  # everyone connected before the clock starts
        await asyncio.sleep(0.05)
    cpu0, t0, tick = time.process_time(), loop.time(), 0
    while loop.time() - t0 < seconds - 1.0:
        hub.publish("frame:default", frame_message("default", jpegs[tick % len(jpegs)]))
        if tick % 4 == 0:
            hub.publish("prediction:default", message(tick))
        if tick % 10 == 0:
            hub.publish("status:default", message(tick).replace('"prediction"', '"status"'))
        tick += 1
        await asyncio.sleep(max(0.0, t0 + tick * 0.1 - loop.time()))
    await asyncio.sleep(0.5)  # let the senders finish what was published
    cpu, wall = time.process_time() - cpu0, loop.time() - t0
    out, _ = await proc.communicate()
    await server.close()
    got = json.loads(out)
    return {"compression": compression or "none", "cpu_ms_per_s": round(1e3 * cpu / wall, 1),
            "messages_per_client_per_s": round(sum(g["messages"] for g in got) / len(got) / seconds, 2),
            "kb_per_client_per_s": round(sum(g["bytes"] for g in got) / len(got) / seconds / 1e3, 1),
            "negotiated_deflate": sum(g["deflate"] for g in got), "clients": len(got)}


def deflated_share(jpegs: list[bytes], seconds: float = 20.0) -> dict[str, float]:
    """What deflate would save on the wire: one client's message sequence through one deflate
    stream with context takeover and a sync flush per message, as permessage-deflate does."""
    import zlib

    from streamrec.serve.preview import frame_message

    z = zlib.compressobj(wbits=-15)
    sizes = {"frames": [0, 0], "json": [0, 0]}
    for tick in range(int(seconds * 10)):
        items = [("frames", frame_message("default", jpegs[tick % len(jpegs)]))]
        if tick % 4 == 0:
            items.append(("json", message(tick).encode()))
        if tick % 10 == 0:
            items.append(("json", message(tick).replace('"prediction"', '"status"').encode()))
        for kind, data in items:
            sizes[kind][0] += len(data)
            sizes[kind][1] += len(z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)) - 4  # RFC 7692 drops the 4-byte tail
    total = sum(v[0] for v in sizes.values())
    return {"frames_deflated_to": round(sizes["frames"][1] / sizes["frames"][0], 3),
            "json_deflated_to": round(sizes["json"][1] / sizes["json"][0], 3),
            "all_deflated_to": round(sum(v[1] for v in sizes.values()) / total, 3),
            "json_share_of_bytes": round(sizes["json"][0] / total, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import logging

    logging.getLogger("streamrec.serve.server").setLevel(logging.ERROR)  # clients that left before the close: expected here
    jpegs = frames()
    wire = deflated_share(jpegs)
    print(f"# {len(jpegs)} preview JPEGs, mean {sum(map(len, jpegs)) / len(jpegs) / 1e3:.1f} KB; "
          f"{args.clients} clients, {args.seconds:g} s per round", flush=True)
    print(f"# deflate on the wire: JPEG frames to {wire['frames_deflated_to']:.1%} of their size, JSON to "
          f"{wire['json_deflated_to']:.1%} (JSON is {wire['json_share_of_bytes']:.1%} of the bytes): "
          f"all to {wire['all_deflated_to']:.1%}", flush=True)
    rows = []
    for _ in range(args.rounds):
        for compression in ("deflate", None):
            row = asyncio.run(one_round(compression, jpegs, args.clients, args.seconds))
            rows.append(row)
            print(f"compression {row['compression']:>7}: server CPU {row['cpu_ms_per_s']:6.1f} ms/s, "
                  f"{row['messages_per_client_per_s']:.2f} messages and {row['kb_per_client_per_s']:.1f} KB "
                  f"per client per second (deflate negotiated by {row['negotiated_deflate']} of {row['clients']})",
                  flush=True)
    print(json.dumps({"rounds": rows, "wire": wire}))


if __name__ == "__main__":
    main()
