"""The CUDA path: fp16 + channels_last_3d + TorchScript + CUDA graphs. Skipped without a GPU.

Run on a lent GPU machine with ``pytest -m gpu tests/test_gpu.py``; the figures of that run
are in the README.
"""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
import torch

from streamrec.offline.bench import clip_windows
from streamrec.runtime.classifier import Classifier, CudaGraphRunner
from streamrec.live.messages import validate_prediction
from streamrec.models.registry import load_model

from conftest import free_port, sigterm, wait_http
from test_serve import collect, start_serve

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CL3D = torch.channels_last_3d


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def r2plus1d_fp16():
    torch.manual_seed(0)
    loaded = load_model("r2plus1d_18", weights="none")
    return loaded.module.eval().cuda().half().to(memory_format=CL3D)


def test_graph_runner_matches_the_module_for_every_batch_size():
    net = r2plus1d_fp16()
    example = torch.zeros(1, 3, 16, 112, 112, device="cuda", dtype=torch.half).contiguous(memory_format=CL3D)
    runner = CudaGraphRunner(net, example=example, max_batch=8)
    g = torch.Generator(device="cuda").manual_seed(1)
    outs = {}
    for b in (1, 3, 8, 11):  # 3 is padded to the bucket of 4; 11 > max_batch runs the module directly
        x = torch.randn(b, 3, 16, 112, 112, device="cuda", dtype=torch.half, generator=g).contiguous(memory_format=CL3D)
        with torch.no_grad():
            ref, got = net(x), runner(x)
        assert got.shape == (b, 400)
        assert rel_err(got, ref) < 1e-2, (b, rel_err(got, ref))
        outs[b] = got
    assert sorted(runner.graphs) == [1, 4, 8]
    # a returned result is a copy: the next replay of the same bucket does not overwrite it
    first = outs[1].clone()
    runner(torch.randn(1, 3, 16, 112, 112, device="cuda", dtype=torch.half, generator=g).contiguous(memory_format=CL3D))
    assert torch.equal(outs[1], first)


def test_cuda_classifier_agrees_with_cpu_fp32_on_real_windows(demo_clip, tmp_path, monkeypatch):

    from streamrec.runtime import autopick
    from streamrec.runtime import openvino
    for module in (openvino, autopick):  # measure here, whatever an earlier run cached

        monkeypatch.setattr(module, "CACHE", tmp_path)
    torch.manual_seed(0)
    loaded = load_model("r2plus1d_18", weights="none")
    cpu = Classifier(loaded, device="cpu", backend="torch", warmup=0)
    windows = clip_windows([demo_clip], loaded, stride=0.7)  # 10 s: 14 windows
    with torch.no_grad():
        ref = [cpu.logits(w) for w in windows]
    torch.manual_seed(0)
    gpu = Classifier(load_model("r2plus1d_18", weights="none"), device="cuda", backend="auto")
    assert gpu.cuda and gpu.dtype == torch.float16
    assert gpu.backend.split("+")[0].split("-")[0] in ("torch", "torchscript", "compile")
    assert {f"{b}{v}_ms" for b in ("torch", "torchscript") for v in ("", "-pad8", "-conv2d", "-conv2d-pad8")} | {"compile-pad8_ms"} <= set(gpu.timings)
    got = [gpu.logits(w) for w in windows]
    errs = [rel_err(g, r) for g, r in zip(got, ref)]
    agree = sum(int(g.argmax() == r.argmax()) for g, r in zip(got, ref))
    print(f"{len(windows)} windows, backend {gpu.backend}, max relative logit error {max(errs):.2e}, "
          f"top-1 agreement {agree}/{len(windows)}, timings {gpu.timings}")
    assert len(windows) >= 10
    assert max(errs) < 1e-2
    again = Classifier(load_model("r2plus1d_18", weights="none"), device="cuda", backend="auto")
    assert again.backend == gpu.backend  # the cached choice, built alone: no candidate timed
    assert not [k for k in again.timings if not k.startswith(again.backend.split("+")[0])]
    # fp16 may flip a near-tie of random weights; every window whose fp32 top-2 margin is clear agrees
    for g, r in zip(got, ref):
        top2 = r[0].topk(2).values
        if float(top2[0] - top2[1]) > 20 * float((g - r).abs().max()):
            assert g.argmax() == r.argmax()
    # a batch of windows gives the same scores as the windows one by one
    batch = gpu.logits(torch.cat(windows[:5]))
    assert rel_err(batch, torch.cat(got[:5])) < 1e-2


def test_serve_on_cuda_end_to_end(demo_clip):
    port = free_port()
    proc = start_serve("--source", str(demo_clip), "--loop", "--weights", "none",
                       "--port", str(port), "--device", "cuda")
    try:
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc))
        assert health["device"].startswith("cuda")
        preds, _, _ = asyncio.run(collect(f"ws://127.0.0.1:{port}/ws", 20))
        for p in preds:
            validate_prediction(p)
        health = json.loads(wait_http(f"http://127.0.0.1:{port}/healthz"))
        print("serve on cuda:", health["backend"], "infer_ms", [p["infer_ms"] for p in preds[-5:]],
              "latency_ms", [p["latency_ms"] for p in preds[-5:]])
        assert health["predictions"] >= 20
    finally:
        rc = sigterm(proc)
    assert rc == 0, proc.stderr.read()


def test_compile_backend_matches_eager():
    torch.manual_seed(0)
    loaded = load_model("r2plus1d_18", weights="none")
    ref_net = copy.deepcopy(loaded.module).eval()  # fp32 on CPU; the classifier moves its own to the GPU
    clf = Classifier(loaded, device="cuda", backend="compile")
    assert clf.backend.startswith("compile") and clf.timings["compile_s"] > 0
    g = torch.Generator().manual_seed(5)
    for b in (1, 3):
        x = torch.randn(b, 3, 16, 112, 112, generator=g)
        got = clf.logits(x)
        with torch.no_grad():
            ref = ref_net(x)
        assert got.shape == (b, 400)
        assert rel_err(got, ref) < 1e-2
    print("compile backend:", clf.backend, clf.timings)


def test_fused_conv_relu_variants_match_cpu_fp32_through_cuda_graphs():
    from streamrec.runtime.graphs import ConvReLU, conv_variants

    torch.manual_seed(0)
    loaded = load_model("r2plus1d_18", weights="none")
    ref_net = copy.deepcopy(loaded.module).eval()  # fp32 on CPU
    net = loaded.module.eval().cuda().half().to(memory_format=CL3D)
    variants = conv_variants(net)  # on CUDA: the fused variants are offered
    assert {"-fused", "-pad8-fused"} <= set(variants)
    x = torch.randn(3, 3, 16, 112, 112, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = ref_net(x)
        for name in ("-fused", "-pad8-fused"):
            m = variants[name]
            runner = CudaGraphRunner(m, example=x[:1].cuda().half().contiguous(memory_format=CL3D), max_batch=4)
            got = runner(x.cuda().half().contiguous(memory_format=CL3D)).float().cpu()
            assert got.shape == (3, 400)
            assert rel_err(got, ref) < 1e-2, name
            assert torch.equal(got.argmax(1), ref.argmax(1)), name
            sites = [s for s in m.modules() if isinstance(s, ConvReLU)]
            assert len(sites) == 34
            print(name, "rel err", rel_err(got, ref), "cuDNN refused", sum(not s.fused for s in sites), "of", len(sites))
