"""A model's first CPU start in `streamrec classify` is prepared by a child process, so that
torchvision is never imported under the classification's own memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, error_line, free_port, save_default_weights, sigterm, streamrec_cmd, wait_http
from streamrec.errors import WeightsError
from streamrec.runtime import firststart
from streamrec.runtime import prepared
from streamrec.models.registry import build_model, make_checkpoint, model_spec

PARENT = r"""
import json, sys
from streamrec.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "torchvision": "torchvision" in sys.modules, "torch": "torch" in sys.modules}))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "STREAMREC_CACHE": str(tmp_path / "cache"),
            "STREAMREC_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def _run_parent(tmp_path: Path, *args: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", PARENT, *args], capture_output=True, text=True, timeout=600,
                       env=_env(tmp_path), cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_the_command_line_parses_without_importing_torch():
    code = ("import sys; from streamrec.cli.main import build_parser; "
            "build_parser().parse_args(['classify', 'x.mp4', '--model', 's3d']); "
            "print(sorted(m for m in ('torch', 'torchvision', 'av', 'cv2') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_hub_dir_and_torch_version_agree_with_torch(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert firststart.hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "xdg" / "torch" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert firststart.hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "th" / "hub"
    assert torch.__version__.split("+")[0] == firststart.torch_version().split("+")[0]


@pytest.mark.slow
def test_first_start_prepares_in_a_child_and_the_job_never_imports_torchvision(tmp_path, demo_clip):
    clip = demo_clip
    path = save_default_weights("r2plus1d_18", tmp_path / "torch")
    args = ("classify", str(clip), "--device", "cpu", "--stride", "100", "--format", "json")

    first, log = _run_parent(tmp_path, *args, "--out", str(tmp_path / "first.json"))
    assert first == {"rc": 0, "torchvision": False, "torch": True}
    assert "preparing it in a child process" in log
    assert "loading r2plus1d_18 weights from the torch hub cache" in log  # the child's log, passed on
    entries = list((tmp_path / "cache" / "prepared").glob("r2plus1d_18-*.pt"))
    assert len(entries) == 1
    side = json.loads(firststart.side_file(entries[0]).read_text())
    assert side["cached"] is True and side["stamp"]["file"] == str(path.resolve())

    later, log = _run_parent(tmp_path, *args, "--out", str(tmp_path / "later.json"))
    assert later == {"rc": 0, "torchvision": False, "torch": True}
    assert "child process" not in log
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("first.json", "later.json"))
    assert a["windows"] == b["windows"] and len(a["windows"]) == 2  # the same graph, the same scores (ends: 1 s, the tail)


@pytest.mark.slow
def test_serve_first_start_prepares_in_a_child_and_the_server_never_maps_torchvision(tmp_path, demo_clip):
    save_default_weights("r2plus1d_18", tmp_path / "torch")
    port = free_port()
    proc = subprocess.Popen(streamrec_cmd("serve", "--source", str(demo_clip), "--loop", "--port", str(port),
                                          "--device", "cpu", "--backend", "torch"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_env(tmp_path), "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 240
        while json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc))["predictions"] < 1:
            assert time.monotonic() < deadline, "no prediction within 240 s"
            time.sleep(0.5)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "torch/lib/libtorch" in maps and "torchvision" not in maps  # torch loaded, torchvision never
    finally:
        assert sigterm(proc) == 0
    log = proc.stderr.read()
    assert "preparing it in a child process" in log and "loaded r2plus1d_18 from the prepared-model cache" in log
    assert len(list((tmp_path / "cache" / "prepared").glob("r2plus1d_18-*.pt"))) == 1


API = r"""
import json, logging, sys
import numpy as np
if sys.argv[1] == "torchvision-first":
    import torchvision  # noqa: F401  (a notebook that imported it already: no child then)
logging.basicConfig(level=logging.INFO)
import streamrec
rec = streamrec.load_recognizer(model="r2plus1d_18", weights="DEFAULT", device="cpu", backend="torch")
frames = np.random.default_rng(0).integers(0, 256, (16, 128, 171, 3), dtype=np.uint8)
top = [[p.label, p.score] for p in rec.predict(frames, k=3)]
print(json.dumps({"torchvision": "torchvision" in sys.modules, "top": top}))
"""


@pytest.mark.slow
def test_the_python_api_prepares_a_first_start_in_a_child_too(tmp_path):
    save_default_weights("r2plus1d_18", tmp_path / "torch")

    def notebook(mode: str, cache: str) -> tuple[dict, str]:
        r = subprocess.run([sys.executable, "-c", API, mode], capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env=_env(tmp_path, STREAMREC_CACHE=str(tmp_path / cache)))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr

    first, log = notebook("plain", "cache")
    assert first["torchvision"] is False
    assert "preparing it in a child process" in log
    assert len(list((tmp_path / "cache" / "prepared").glob("r2plus1d_18-*.pt"))) == 1
    later, log = notebook("plain", "cache")
    assert later == first and "child process" not in log
    # a kernel that has torchvision already loads in its own process, and gets the same scores
    own, log = notebook("torchvision-first", "cache-own")
    assert own == {"torchvision": True, "top": first["top"]} and "child process" not in log


def test_sigterm_while_preparing_ends_the_child_too(tmp_path, demo_clip):
    import psutil

    save_default_weights("r2plus1d_18", tmp_path / "torch")
    proc = subprocess.Popen(streamrec_cmd("classify", str(demo_clip), "--device", "cpu"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    children: list = []
    while not children:
        assert time.monotonic() < deadline and proc.poll() is None, "no child process started"
        try:
            children = [c for c in parent.children() if "streamrec.runtime.prepared" in c.cmdline()]
        except psutil.NoSuchProcess:  # a child that was just starting: look again
            pass
        time.sleep(0.02)
    assert sigterm(proc) == 143
    psutil.wait_procs(children, timeout=10)
    assert not any(c.is_running() for c in children)


@pytest.mark.slow
def test_offline_first_start_fails_once_with_the_jobs_own_error(tmp_path, demo_clip):
    clip = demo_clip
    r = subprocess.run([sys.executable, "-m", "streamrec", "classify", str(clip), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=ROOT)
    line = error_line(r)
    assert "r2plus1d_18-91a641e6.pth" in line and str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert "error" not in r.stderr.replace(line, "")  # the child's failure is not shown as well
    assert "loading in this process" not in r.stderr  # reported from the child: no second load


def _tiny_checkpoint(path: Path) -> None:
    net = build_model("tiny3d", num_classes=2)
    torch.save(make_checkpoint(net, model="tiny3d", classes=["jump", "run"], spec=model_spec("tiny3d")), path)


@pytest.mark.slow
def test_needs_preparing_follows_the_entry_and_its_weights_file(tmp_path, monkeypatch):
    cache, w = tmp_path / "cache", tmp_path / "w.pt"
    _tiny_checkpoint(w)
    monkeypatch.setattr(firststart, "gpu_present", lambda: False)
    assert firststart.needs_preparing(cache, None, str(w), device="cpu")
    assert firststart.needs_preparing(cache, None, str(w), device="auto")
    assert not firststart.needs_preparing(cache, None, str(w), device="cuda")
    assert not firststart.needs_preparing(cache, None, "none", device="cpu")
    assert not firststart.needs_preparing(cache, None, str(tmp_path / "missing.pt"), device="cpu")
    assert firststart.prepare(cache, None, str(w)) is True  # a real child process
    assert not firststart.needs_preparing(cache, None, str(w), device="cpu")
    assert type(prepared.load(None, str(w), cache=cache).module).__name__ == "GraphModule"
    before = w.stat()
    _tiny_checkpoint(w)  # new weights, same size: the entry is stale
    os.utime(w, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # a later mtime, however coarse the clock
    assert firststart.needs_preparing(cache, None, str(w), device="cpu")
    monkeypatch.setattr(firststart, "gpu_present", lambda: True)  # auto may mean CUDA: no child
    assert not firststart.needs_preparing(cache, None, str(w), device="auto")


def test_a_model_that_cannot_be_cached_is_not_prepared_again(tmp_path, monkeypatch):
    from streamrec.offline.evaluate import export

    cache, w = tmp_path / "cache", tmp_path / "w.ts"
    _tiny_checkpoint(tmp_path / "w.pt")
    export(str(tmp_path / "w.pt"), str(w), fmt="torchscript")
    monkeypatch.setattr(firststart, "gpu_present", lambda: False)
    prepared.load("tiny3d", str(w), cache=cache)  # an exported model: not cached as a graph
    entry = firststart.entry_path(cache, "tiny3d", str(w))
    assert not entry.exists()
    assert json.loads(firststart.side_file(entry).read_text())["cached"] is False
    assert not firststart.needs_preparing(cache, "tiny3d", str(w), device="cpu")


@pytest.mark.slow
def test_an_exported_onnx_file_is_prepared_without_tracing_it(tmp_path, monkeypatch):
    """The child once fx-traced the ONNX Runtime wrapper and crashed (SIGSEGV) on every start."""
    from streamrec.offline.evaluate import export

    cache, w = tmp_path / "cache", tmp_path / "w.onnx"
    _tiny_checkpoint(tmp_path / "w.pt")
    export(str(tmp_path / "w.pt"), str(w), fmt="onnx")
    monkeypatch.setattr(firststart, "gpu_present", lambda: False)
    assert firststart.needs_preparing(cache, "tiny3d", str(w), device="cpu")
    assert firststart.prepare(cache, "tiny3d", str(w)) is True  # a real child process, exit 0
    entry = firststart.entry_path(cache, "tiny3d", str(w))
    assert json.loads(firststart.side_file(entry).read_text())["cached"] is False
    assert not firststart.needs_preparing(cache, "tiny3d", str(w), device="cpu")
    loaded = prepared.load("tiny3d", str(w), cache=cache)
    assert loaded.prebuilt and loaded.classes == ["jump", "run"]


@pytest.mark.slow
def test_prepare_raises_the_childs_user_error(tmp_path):
    with pytest.raises(WeightsError) as caught:  # the child's own error, for the job to report once
        firststart.prepare(tmp_path / "cache", None, str(tmp_path / "missing.pt"))
    assert str(caught.value) == f"--weights: expected DEFAULT, none or a file, got {str(tmp_path / 'missing.pt')!r} (no such file)"


@pytest.mark.slow
def test_a_failed_download_is_tried_once_and_suggests_random_weights(tmp_path, demo_clip):
    """No STREAMREC_OFFLINE: the child tries the download (through a proxy that refuses at once),
    fails, and the job reports the child's error instead of downloading a second time."""
    env = {k: v for k, v in _env(tmp_path).items() if k.lower() not in ("streamrec_offline", "no_proxy")}
    proxy = f"http://127.0.0.1:{free_port()}"
    env.update(https_proxy=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, HTTP_PROXY=proxy)
    r = subprocess.run([sys.executable, "-m", "streamrec", "classify", str(demo_clip), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    line = error_line(r)
    assert "download failed" in line and line.endswith("or try the pipeline with --weights none (random weights)")
    assert r.stderr.count("downloading r2plus1d_18 weights from") == 1
    assert "preparing it in a child process" in r.stderr and "loading in this process" not in r.stderr


def _read_until(proc: subprocess.Popen, pattern: str, seen: list[str]) -> re.Match:
    """serve's stderr lines (kept in ``seen``) up to the first that matches ``pattern``."""
    for line in proc.stderr:
        seen.append(line.rstrip("\n"))
        hit = re.search(pattern, line)
        if hit:
            return hit
    raise AssertionError(f"serve exited ({proc.wait()}) before a line matching {pattern!r}: {seen}")


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "s3cret"])
def test_serve_answers_at_once_and_says_it_prepares_the_model(tmp_path, demo_clip, token):
    from streamrec.serve.server import page_html

    gate = tmp_path / "gate"  # the start waits for it (streamrec.serve.starting's test hook)
    args = ["serve", "--source", str(demo_clip), "--loop", "--port", "0", "--model", "tiny3d", "--weights", "none",
            "--device", "cpu", "--backend", "auto", "--db", str(tmp_path / "h.db")]
    proc = subprocess.Popen(streamrec_cmd(*args, *(["--token", token] if token else [])), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**_env(tmp_path), "PYTHONUNBUFFERED": "1", "STREAMREC_START_GATE": str(gate)})
    seen: list[str] = []
    try:
        hit = _read_until(proc, r"preparing the model \(about (\d+) s\); the page is up meanwhile: "
                                r"http://127\.0\.0\.1:(\d+)/$", seen)
        expected, port = int(hit.group(1)), int(hit.group(2))
        assert expected == firststart_estimate()
        base = f"http://127.0.0.1:{port}"
        _read_until(proc, "waiting for .*gate", seen)
        status, body = _get(f"{base}/healthz", token)
        state = json.loads(body)
        assert status == 200 and state["status"] == "starting", state
        assert state["preparing"]["message"] == f"preparing the model (about {expected} s)"
        assert state["preparing"]["doing"].startswith("waiting for ")
        assert _get(f"{base}/", token) == (200, page_html())
        assert b"preparing the model" in page_html()  # the page says it while /healthz answers "starting"
        assert _get(f"{base}/ws", token)[0] == 503
        if token:  # without the token: the status only, and no page
            assert json.loads(_get(f"{base}/healthz")[1]) == {
                "status": "starting", "preparing": {"message": f"preparing the model (about {expected} s)"}}
            assert _get(f"{base}/")[0] == 401
        gate.touch()
        timing = _read_until(proc, r"timing backend 1/(\d+): torch$", seen)
        _read_until(proc, rf"timing backend {timing.group(1)}/{timing.group(1)}: ", seen)
        _read_until(proc, rf"serving default .* at http://127\.0\.0\.1:{port}/", seen)  # the same socket
        health = json.loads(_get(f"{base}/healthz", token)[1])
        assert "preparing" not in health and set(health["cameras"]) == {"default"}, health
        assert _get(f"{base}/", token) == (200, page_html())
    finally:
        assert sigterm(proc) == 0, seen
    assert json.loads((tmp_path / "cache" / "starts.json").read_text())  # the next start's estimate


def firststart_estimate() -> int:
    """The estimate of a start that loads nothing for the first time and times the backends once."""
    from streamrec.serve import starting

    return round(starting.TIMING_S + starting.CACHED_S)


def _tiny3d_checkpoint(path: Path) -> Path:
    net = build_model("tiny3d", num_classes=2)
    torch.save(make_checkpoint(net, model="tiny3d", classes=["jump", "run"], spec=model_spec("tiny3d")), path)
    return path


@pytest.mark.parametrize("signal_name, phase", [("SIGTERM", "gate"), ("SIGINT", "gate"), ("SIGTERM", "child"),
                                                 ("SIGINT", "timing"), ("SIGTERM", "camera")])
@pytest.mark.slow
def test_a_signal_while_preparing_stops_serve_cleanly(tmp_path, demo_clip, signal_name, phase):
    """SIGTERM or Ctrl-C while serve prepares the model (held at the gate, while the first-start
    child runs, while --backend auto times the backends, or while a camera that does not answer is
    opened, in a C call that returns only at --open-timeout): exit 0 within seconds, no traceback,
    the port released, no child left."""
    import signal
    import socket

    gate = tmp_path / "gate"
    weights = str(_tiny3d_checkpoint(tmp_path / "w.pt")) if phase == "child" else "none"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    source = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x" if phase == "camera" else str(demo_clip)
    args = ["serve", "--source", source, "--open-timeout", "30", "--loop", "--port", "0", "--model", "tiny3d",
            "--weights", weights, "--device", "cpu", "--backend", "auto" if phase == "timing" else "torch", "--db", str(tmp_path / "h.db")]
    extra = {"STREAMREC_START_GATE": str(gate)} if phase == "gate" else {}
    proc = subprocess.Popen(streamrec_cmd(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**_env(tmp_path), "PYTHONUNBUFFERED": "1", **extra})
    seen: list[str] = []
    try:
        port = int(_read_until(proc, r"the page is up meanwhile: http://127\.0\.0\.1:(\d+)/$", seen).group(1))
        if phase != "camera":
            _read_until(proc, {"gate": "waiting for .*gate", "child": "preparing it in a child process",
                               "timing": "timing backend 1/"}[phase], seen)
        time.sleep(1.5 if phase == "camera" else 0)  # the camera's open has begun
        proc.send_signal(getattr(signal, signal_name))
        started = time.monotonic()
        rc = proc.wait(timeout=10)
        took = time.monotonic() - started
        rest = proc.stderr.read()
    finally:
        proc.kill()
        silent.close()
    assert rc == 0 and took < 5, (rc, took, seen, rest)
    assert "Traceback" not in rest and "Traceback" not in "\n".join(seen), rest
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # released
    if phase == "child":
        running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert str(tmp_path / "cache") not in running  # the child (given --cache there) was ended too
