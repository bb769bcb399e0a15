"""Every CPU backend agrees with eager fp32 on every window of a real clip; the CPU
fallbacks of the GPU path (TorchScript, batching) work without a GPU."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from streamrec.runtime import backends

from streamrec.runtime import openvino


from streamrec import catalog

from streamrec.runtime import autopick
from streamrec.models.exported import torchscript_quiet
from streamrec.offline.bench import agreement, clip_windows, cpu_backends, markdown, run
from streamrec.runtime.classifier import Classifier
from streamrec.models.registry import load_model



@pytest.fixture(scope="module")
def r2plus1d():
    torch.manual_seed(1234)  # fixed random weights
    return load_model("r2plus1d_18", weights="none")


@pytest.fixture(scope="module")
def real_windows(demo_clip, r2plus1d):
    """Windows of the shipped real clip (10 s), one every 1.4 s, as r2plus1d_18 takes them."""
    return clip_windows([demo_clip], r2plus1d, stride=1.4)


@pytest.fixture(scope="module")
def compiled(r2plus1d):
    """Every CPU backend of r2plus1d_18 on 2 threads, converted and compiled once for the tests
    that compare them ("torch" too: on CPU it is the rewritten model, streamrec.runtime.graphs)."""
    return cpu_backends(r2plus1d, backends.available(), threads=2)


@pytest.mark.slow
def test_backends_agree_with_eager_on_every_real_window(real_windows, r2plus1d, compiled):
    windows = real_windows
    assert len(windows) >= 6
    names = backends.available()
    assert {"torch", "torchscript", "onnxruntime", "openvino"} <= set(names)
    fns = compiled
    result = agreement(r2plus1d.module.eval(), fns, windows)
    assert set(result) == set(names)
    for name, r in result.items():
        print(f"{name}: top-1 agrees on {r['top1_agree']}/{r['windows']} windows, max |logit diff| {r['max_abs_logit_diff']:.2e}")
        assert r["top1_agree"] == r["windows"], name
        assert r["max_abs_logit_diff"] < 1e-3, name


def _openvino_has_partitioner() -> bool:
    import openvino as ov

    return "TBB_PARTITIONER" in ov.Core().get_property("CPU", "SUPPORTED_PROPERTIES")


@pytest.mark.slow
@pytest.mark.hardware
@pytest.mark.skipif(not _openvino_has_partitioner(), reason="this OpenVINO cannot choose its TBB partitioner")
def test_openvino_balances_layers_across_threads_with_the_same_logits(real_windows, r2plus1d, compiled):
    """Each layer's work is cut in chunks the threads take as they go (a thread on a slowed vCPU
    takes fewer), not in one fixed half per thread; that changes who computes what, not the sums."""
    balanced = compiled["openvino"]
    assert str(balanced.compiled.get_property("TBB_PARTITIONER")) == "TbbPartitioner.AUTO"
    ov, model = openvino.openvino_model(r2plus1d)
    fixed = openvino.compile_model(ov, model, 2, partitioner="STATIC")
    assert str(fixed.compiled.get_property("TBB_PARTITIONER")) == "TbbPartitioner.STATIC"
    for window in real_windows[::2]:
        assert torch.equal(balanced(window), fixed(window))


@pytest.mark.slow
@pytest.mark.hardware
@pytest.mark.skipif(not openvino.bf16_supported(), reason="this CPU has no bfloat16 instructions")
def test_bf16_backend_computes_in_bfloat16_and_keeps_every_real_windows_top1(real_windows, r2plus1d):
    fns = cpu_backends(r2plus1d, ["openvino-bf16"], threads=2)
    assert "bfloat16" in str(fns["openvino-bf16"].compiled.get_property("INFERENCE_PRECISION_HINT"))
    r = agreement(r2plus1d.module.eval(), fns, real_windows)["openvino-bf16"]
    print(f"bf16: top-1 agrees on {r['top1_agree']}/{r['windows']} windows, max |logit diff| {r['max_abs_logit_diff']:.2e}")
    assert r["top1_agree"] == r["windows"] >= 25
    # really bfloat16 (the fp32 backends stay within 1e-6 of eager here), and still close: 3.7e-3 measured
    assert 1e-4 < r["max_abs_logit_diff"] < 2e-2


@pytest.mark.slow
def test_auto_never_picks_a_lower_precision_backend(tmp_path, monkeypatch):
    """bf16 and int8 change the scores a little: only asked for, never chosen by timing."""
    for module in (openvino, autopick):
        monkeypatch.setattr(module, "CACHE", tmp_path)
    picked = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="auto", warmup=0)
    trial = json.loads((tmp_path / "backends.json").read_text())
    assert picked.backend in catalog.CPU_BACKENDS and set(trial.values()) <= set(catalog.CPU_BACKENDS)
    assert "openvino-bf16" in catalog.BACKEND_NAMES and "openvino-bf16" not in backends.available()


@pytest.mark.slow
def test_auto_picks_a_measured_backend_and_caches_it(tmp_path, monkeypatch):
    for module in (openvino, autopick):
        monkeypatch.setattr(module, "CACHE", tmp_path)
    loaded = load_model("tiny3d", weights="none")
    first = Classifier(loaded, device="cpu", backend="auto")
    assert first.backend in backends.available()
    cached = (tmp_path / "backends.json").read_text()
    assert first.backend in cached
    again = Classifier(loaded, device="cpu", backend="auto")
    assert again.backend == first.backend


@pytest.mark.slow
def test_batched_torchscript_matches_eager_per_window():
    torch.manual_seed(0)
    loaded = load_model("tiny3d", weights="none")
    scripted = Classifier(loaded, device="cpu", backend="torchscript")
    assert scripted.backend == "torchscript"
    x = torch.randn(4, 3, 16, 112, 112)
    batched = scripted.logits(x)
    single = torch.cat([scripted.logits(x[i : i + 1]) for i in range(4)])
    with torch.no_grad():
        eager = loaded.module.eval()(x)
    assert torch.allclose(batched, single, atol=1e-4) and torch.allclose(batched, eager, atol=1e-4)


@pytest.mark.slow
@pytest.mark.bench  # the benchmark harness end to end: left out of the default run (pytest -m bench)
def test_bench_report_runs_end_to_end(demo_clip):
    report = run(models=["tiny3d"], clip=demo_clip, clips=[demo_clip],
                 device="cpu", batches=[1, 2], int8=True, repeats=1)
    m = report["models"]["tiny3d"]
    assert report["peak_gflops"] > 0 and m["gflop_per_window"] > 0
    assert {"torch", "torchscript", "onnxruntime", "openvino", "openvino-int8"} <= set(m["backends"])
    if openvino.bf16_supported():  # timed and checked like the others, never the "best fp32"
        assert m["agreement"]["openvino-bf16"]["windows"] == 6 and "bf16_speedup_vs_best_fp32" in m
        assert m["best_fp32"] not in ("openvino-bf16", "openvino-int8")
    assert set(m["batched"]["by_batch"]) == {1, 2}
    assert m["agreement"]["openvino"]["windows"] == 6  # 10 s clip, stride 2 s: ends at 1, 3, 5, 7, 9 s + the tail
    text = markdown(report)
    assert "| openvino-int8 |" in text and "windows/s" in text


def test_compile_backend_is_for_gpus_only():
    from streamrec.errors import StreamrecError

    with pytest.raises(StreamrecError, match="--backend compile: for CUDA GPUs; on CPU use auto"):
        Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="compile")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "torchscript", "onnxruntime", "openvino", pytest.param(
    "openvino-bf16", marks=[pytest.mark.hardware,
                            pytest.mark.skipif(not openvino.bf16_supported(), reason="this CPU has no bfloat16 instructions")])])
def test_an_explicit_backend_is_the_one_used(name):
    loaded = load_model("tiny3d", weights="none")
    clf = Classifier(loaded, device="cpu", backend=name, warmup=0)
    assert clf.backend == name
    if name == "torch":
        assert clf.module is loaded.module


def test_auto_trial_keeps_only_the_fastest_built(tmp_path):
    import gc
    import time
    import weakref

    class Fake:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        def __call__(self, x):
            time.sleep(self.delay)
            return x

    refs = {}

    def factory(name, delay):
        def build():
            refs[name] = weakref.ref(obj := Fake(delay))
            return obj
        return build

    loaded = load_model("tiny3d", weights="none")
    factories = {"slow": factory("slow", 0.05), "fast": factory("fast", 0.0), "slower": factory("slower", 0.1)}
    best, winner = autopick.pick_auto(loaded, factories, threads=1, cache_file=tmp_path / "b.json")
    gc.collect()
    assert best == "fast" and refs["fast"]() is winner
    assert refs["slow"]() is None and refs["slower"]() is None  # the losers' memory went back


def test_auto_choice_for_a_gpu_is_timed_on_its_example_and_cached_under_its_own_key(tmp_path):
    calls: dict[str, list] = {}

    def factory(name):
        def build():
            return lambda x: calls.setdefault(name, []).append(tuple(x.shape)) or x
        return build

    loaded = load_model("tiny3d", weights="none")
    example = torch.zeros(4, 3, 2, 8, 8)
    times: dict[str, float] = {}
    cache = tmp_path / "b.json"
    best, _ = autopick.pick_auto(loaded, {"a": factory("a"), "b": factory("b")}, threads=None, cache_file=cache,
                                 device="Some GPU|batch 4", example=example, repeats=5, times=times)
    assert set(times) == {"a", "b"} and best == min(times, key=times.get)
    assert calls == {"a": [(4, 3, 2, 8, 8)] * 6, "b": [(4, 3, 2, 8, 8)] * 6}  # one warm-up + 5 timed, on the example
    assert list(json.loads(cache.read_text())) == [f"tiny3d|(112, 112)|Some GPU|batch 4|{torch.__version__}"]
    again: dict[str, float] = {}
    calls.clear()
    assert autopick.pick_auto(loaded, {"a": factory("a"), "b": factory("b")}, threads=None, cache_file=cache,
                              device="Some GPU|batch 4", example=example, times=again)[0] == best
    assert again == {} and calls == {}  # the cached choice is built, nothing is timed


@pytest.mark.slow
def test_our_torchscript_and_onnx_steps_show_no_deprecation_warnings(tmp_path, monkeypatch):
    """torch 2.14 deprecates torch.jit and the TorchScript-based ONNX exporter; streamrec uses
    both on purpose, and a user of `export` or `--backend openvino` cannot act on the warnings."""
    import warnings

    from streamrec.offline.evaluate import export
    from streamrec.models.registry import make_checkpoint, model_spec

    for module in (openvino, autopick):  # OpenVINO converts, not reads its IR

        monkeypatch.setattr(module, "CACHE", tmp_path / "cache")
    loaded = load_model("tiny3d", weights="none")
    torch.save(make_checkpoint(loaded.module, model="tiny3d", classes=loaded.classes, spec=model_spec("tiny3d")),
               tmp_path / "m.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("torchscript", "onnxruntime", "openvino"):
            assert Classifier(loaded, device="cpu", backend=name, warmup=0).backend == name
        export(str(tmp_path / "m.pt"), str(tmp_path / "m.ts"), fmt="torchscript")
        export(str(tmp_path / "m.pt"), str(tmp_path / "m.onnx"), fmt="onnx")
    assert list((tmp_path / "cache" / "openvino").glob("*")) == []  # random weights: converted, never cached
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []


def test_torchscript_quiet_hides_only_torch_jit_deprecations():
    """torch 2.14 warns with FutureWarning, 2.11 (a lent GPU machine's) with DeprecationWarning."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torchscript_quiet():
            warnings.warn("`torch.jit.trace` is deprecated. Please switch to `torch.compile`.", FutureWarning)
            warnings.warn("`torch.jit.freeze` is deprecated. Please use `torch.compile` instead.", DeprecationWarning)
            warnings.warn("something else is deprecated", DeprecationWarning)
            warnings.warn("`torch.jit.trace` looked odd", UserWarning)
        warnings.warn("`torch.jit.trace` is deprecated.", FutureWarning)  # outside the block: shown
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, "something else is deprecated"), (UserWarning, "`torch.jit.trace` looked odd"),
        (FutureWarning, "`torch.jit.trace` is deprecated.")]


@pytest.mark.slow
def test_openvino_is_used_without_its_telemetry(tmp_path):
    """OpenVINO collects usage data by default: ``import openvino`` writes a client id to
    ``~/intel`` and each conversion sends events to Google Analytics. A fresh process (its own
    HOME, no CI variable: OpenVINO is silent in CI) converts and runs a model, then reports
    what its telemetry sender was handed."""
    script = textwrap.dedent("""
        import json
        from openvino_telemetry.utils.opt_in_checker import OptInChecker
        from openvino_telemetry.utils.sender import TelemetrySender
        sent = []
        TelemetrySender.send = lambda self, backend, message: sent.append(str(message))
        original = OptInChecker.check
        import torch
        from streamrec.runtime import backends, onnx
        from streamrec.models.registry import load_model
        fn = backends.build("openvino", load_model("tiny3d", weights="none"), threads=1)
        assert fn(onnx.example_input(load_model("tiny3d", weights="none"))).shape[0] == 1
        import openvino_telemetry
        print(json.dumps({"sent": sent, "consent": openvino_telemetry.Telemetry().consent,
                          "check_restored": OptInChecker.check is original}))
    """)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), STREAMREC_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {"sent": [], "consent": False, "check_restored": True}
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []  # no ~/intel/openvino_ga_cid


@pytest.mark.slow
def test_openvino_cache_keeps_the_most_recently_used_models(tmp_path, monkeypatch):
    """One converted model per weights, at most OPENVINO_KEEP of them, the least recently used
    deleted first; random weights are never written."""
    for module in (openvino, autopick):
        monkeypatch.setattr(module, "CACHE", tmp_path)
    monkeypatch.setattr(openvino, "OPENVINO_KEEP", 2)
    folder = tmp_path / "openvino"

    def trained(seed):  # stands for a fine-tuned checkpoint: weights of its own, labels meaningful
        torch.manual_seed(seed)
        return dataclasses.replace(load_model("tiny3d", weights="none"), meaningless=False)

    def cached():
        return sorted(p.name for p in folder.iterdir())

    def name(m, ext):
        return f"tiny3d-112x112-{openvino.weights_digest(m.module)}{ext}"

    models = [trained(seed) for seed in range(4)]
    for i, m in enumerate(models[:3]):
        backends.build("openvino", m)
        for ext in (".xml", ".bin"):
            os.utime(folder / name(m, ext), (1000 + i, 1000 + i))  # used in this order
    assert cached() == sorted(name(m, ext) for m in models[1:3] for ext in (".xml", ".bin"))
    backends.build("openvino", models[1])  # read back: now the most recently used
    backends.build("openvino", models[3])
    assert cached() == sorted(name(m, ext) for m in (models[1], models[3]) for ext in (".xml", ".bin"))
    backends.build("openvino", load_model("tiny3d", weights="none"))
    assert cached() == sorted(name(m, ext) for m in (models[1], models[3]) for ext in (".xml", ".bin"))


class _Eigen(torch.nn.Module):
    """A model OpenVINO's PyTorch frontend has no conversion for (``linalg.eig``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3, 4)).reshape(-1, 3, 1).expand(-1, 3, 3).contiguous()  # (B, C, T, H, W) -> (B, 3, 3)
        return torch.linalg.eig(m)[0].real


def test_a_model_openvino_cannot_convert_is_a_one_line_error(tmp_path, monkeypatch):
    from streamrec.errors import StreamrecError

    for module in (openvino, autopick):

        monkeypatch.setattr(module, "CACHE", tmp_path)
    loaded = dataclasses.replace(load_model("tiny3d", weights="none"), module=_Eigen())
    with pytest.raises(StreamrecError) as err:
        backends.build("openvino", loaded)
    message = str(err.value)
    assert message.startswith("OpenVINO cannot convert tiny3d (") and "\n" not in message
    assert message.endswith("); use another --backend (auto picks one that runs)")
    assert list(tmp_path.glob("openvino/*")) == []
