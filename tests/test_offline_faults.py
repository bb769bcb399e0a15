"""The offline commands facing damaged files, full disks and edge values: one line and exit 2,
or the work done, never a traceback, a hang or an input overwritten."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import error_line, run_main, write_video
from streamrec.errors import StreamrecError


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x08\x01\x12\x04junk" * 10])
def test_a_damaged_onnx_file_is_a_one_line_weights_error(tmp_path, content):
    from streamrec.errors import WeightsError
    from streamrec.models.registry import load_model

    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_model(None, weights=str(bad))
    message = str(info.value)
    assert message.startswith(f"--weights {bad}: not an ONNX model ONNX Runtime can read (")
    assert message.endswith("); copy or export it again") and "\n" not in message


@pytest.mark.slow
def test_a_stride_too_small_to_move_on_is_refused_and_never_loops(tmp_path):
    """``next_end += 1e-300`` does not change ``next_end``: quantize refuses such a stride, and
    the window loop itself takes it as the smallest stride."""
    from streamrec.live.sources import PyAVSource, SourceSpec
    from streamrec.models.tiny3d import TINY3D_SPEC
    from streamrec.offline.classify import iter_windows
    from streamrec.offline.quantize import check_args

    with pytest.raises(StreamrecError, match=r"^--stride: expected 0.01 to 86400 seconds between windows, got 1e-300$"):
        check_args(stride=1e-300, min_agreement=0.9, max_score_diff=0.1)
    clip = write_video(tmp_path / "c.mp4", seconds=1.5, fps=30, size=(64, 48))

    def ends(stride: float) -> list[float]:
        with PyAVSource(SourceSpec.parse(str(clip))) as src:
            return [round(w.end_ts, 4) for w, _ in iter_windows(src, TINY3D_SPEC, stride=stride)]

    assert ends(1e-300) == ends(0.01) and len(ends(0.01)) > 1


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_a_confusion_plot_of_a_400_class_model_shows_the_classes_met(tmp_path):
    """A Kinetics model on a dataset of three classes: the plot is of those (and what the model
    answered), not a 400 x 400 grid of 160,000 numbers that took minutes and gigabytes."""
    from streamrec.offline.evaluate import PLOT_INCHES_MAX, plot_confusion

    classes = [f"class {i}" for i in range(400)]
    m = np.zeros((400, 400), dtype=int)
    m[5, 5], m[5, 9], m[9, 9], m[200, 7] = 4, 1, 5, 2  # true 5, 9, 200; answered 5, 9, 7
    plot_confusion(m, classes, str(tmp_path / "cm.png"))
    assert png_size(tmp_path / "cm.png") == (4 * 90, 4 * 90)  # four classes: the smallest figure

    everywhere = np.eye(400, dtype=int)
    plot_confusion(everywhere, classes, str(tmp_path / "all.png"))  # every class met: colours, capped size
    assert png_size(tmp_path / "all.png") == (int(PLOT_INCHES_MAX * 90),) * 2


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_an_oserror_and_the_old_file_stays(tmp_path):
    """torch's zip writer turns a write that fails into a RuntimeError ('unexpected pos'); the
    commands say an OSError in one line. Run in a child, under a file size limit."""
    out = tmp_path / "model.pt"
    out.write_bytes(b"last week's model")
    code = f"""
import resource, signal, sys, torch
from streamrec.fsutil import atomic_torch_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
try:
    atomic_torch_save({{"w": torch.zeros(1 << 20)}}, {str(out)!r})
except OSError as exc:
    print("OSError", exc.errno)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "OSError 27", proc.stderr  # EFBIG: file too large
    assert out.read_bytes() == b"last week's model" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_resumed_run_whose_checkpoint_was_deleted_writes_it_again(tmp_path):
    from streamrec.offline.chance import Chance, Keeper

    out = tmp_path / "model.pt"  # the state says it was saved at val loss 0.5; the file is gone
    state = {"best": 0.5, "stale": 0, "saved": 0.5, "saved_row": {"val_loss": 0.5, "val_top1": 0.9}}
    keeper = Keeper(out, Chance.of([0, 1, 2]), allow_chance=False, state=state)
    assert keeper.saved_row is None
    keeper.update({"val_loss": 0.6, "val_top1": 0.9}, lambda: {"weights": [1, 2]})  # worse than 0.5, but the only one
    assert out.is_file() and keeper.saved_row == {"val_loss": 0.6, "val_top1": 0.9}


@pytest.mark.parametrize("fmt, out", [("onnx", "model.ts"), ("onnx", "model"), ("torchscript", "model.ONNX")])
def test_export_refuses_a_name_that_would_be_read_as_the_other_format(tmp_path, fmt, out):
    proc = run_main("export", "--weights", str(tmp_path / "m.pt"), "--format", fmt, "--out", str(tmp_path / out))
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == (f"streamrec: error: --out {tmp_path / out}: expected a name ending in .onnx for "
                                f"--format onnx, and only for it (--weights reads .onnx files as ONNX), got --format {fmt}")


@pytest.mark.parametrize("share", ["1e-310", "5e-324", "0.0009", "0.9991"])
def test_a_val_split_too_small_to_hold_out_a_clip_is_refused(tmp_path, share):
    for cls in ("a", "b"):
        (tmp_path / "flat" / cls).mkdir(parents=True)
    proc = run_main("dataset", str(tmp_path / "flat"), "--val-split", share)
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == (f"streamrec: error: --val-split: expected a share of the clips from 0.001 to 0.999, "
                                f"got {float(share)}")


def test_the_confusion_file_may_not_be_the_weights_file(tmp_path):
    weights = tmp_path / "w.csv"
    weights.write_bytes(b"a checkpoint with an odd name")
    (tmp_path / "data" / "a").mkdir(parents=True)
    proc = run_main("evaluate", str(tmp_path / "data"), "--weights", str(weights), "--confusion", str(weights))
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == (f"streamrec: error: --confusion {weights}: that is the input file {weights}; "
                                "writing there would replace it")
    assert weights.read_bytes() == b"a checkpoint with an odd name"


@pytest.mark.slow
def test_a_clip_cache_that_cannot_be_written_still_gives_the_clip(tmp_path, caplog):
    """A full disk or a read-only folder: the clip was decoded, it is not 'unreadable'."""
    from streamrec.models.tiny3d import TINY3D_SPEC
    from streamrec.offline.dataset import ClipCache

    clip = write_video(tmp_path / "c.mp4", seconds=1.0, fps=15, size=(64, 48))
    (tmp_path / "file").write_text("a file where the cache folder would be")
    cache = ClipCache(tmp_path / "file" / "cache", TINY3D_SPEC)
    with caplog.at_level("WARNING", logger="streamrec.offline.dataset"):
        first, second = cache.load(clip), cache.load(clip)
    assert first.frames.shape[0] == 15 and np.array_equal(first.frames, second.frames)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"cannot write the clip cache in {tmp_path / 'file' / 'cache'}"]


@pytest.mark.slow
def test_an_unreadable_clip_met_by_a_loader_worker_is_noted_in_the_main_process(tmp_path):
    """On a machine with more cores the loaders have worker processes: each notes unreadable
    clips in its own copy of the dataset, which the main process never sees ("N unreadable clips
    were skipped" said nothing there). The batch carries them back. Run in a child process of its
    own: a DataLoader with workers leaves torch's SIGCHLD handler in the process that ran it."""
    good = write_video(tmp_path / "good.mp4", seconds=1.2, fps=15, size=(64, 48))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing after")
    code = f"""
import torch
from streamrec.models.tiny3d import TINY3D_SPEC
from streamrec.offline.batches import collate, taken
from streamrec.offline.dataset import ClipCache, ClipDataset, Sample
ds = ClipDataset([Sample({str(good)!r}, 0), Sample({str(bad)!r}, 1), Sample({str(good)!r}, 1)], TINY3D_SPEC,
                 train=False, cache=ClipCache(None, TINY3D_SPEC), clips_per_video=2)
labels = []
for batch in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate):
    got = taken(batch, ds)
    labels += [] if got is None else got[1].tolist()
print(sorted(str(p) for p in ds.unreadable), labels)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.stdout.strip() == f"{[str(bad)]} [0, 0, 1, 1]", proc.stderr[-2000:]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny3d checkpoint of two classes and its TorchScript and ONNX exports (``m.ts``, ``m.onnx``)."""
    import torch

    from streamrec.models.registry import build_model, make_checkpoint, model_spec
    from streamrec.offline.evaluate import export

    folder = tmp_path_factory.mktemp("exported")
    torch.save(make_checkpoint(build_model("tiny3d", num_classes=2), model="tiny3d", classes=["a", "b"],
                               spec=model_spec("tiny3d")), folder / "m.pt")
    export(str(folder / "m.pt"), str(folder / "m.ts"), fmt="torchscript")
    export(str(folder / "m.pt"), str(folder / "m.onnx"), fmt="onnx")
    return folder


@pytest.mark.parametrize("fmt, out", [("onnx", "again.onnx"), ("torchscript", "again.ts")])
def test_an_onnx_model_is_not_exported_again_and_a_torchscript_one_is(exported, tmp_path, fmt, out):
    """Tracing an ONNX Runtime session keeps one answer as a constant: the file written would
    give it for every clip. A TorchScript file exports again with the same outputs."""
    import torch

    from streamrec.models.registry import load_model

    proc = run_main("export", "--weights", str(exported / "m.onnx"), "--format", fmt, "--out", str(tmp_path / out))
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == (f"streamrec: error: --weights {exported / 'm.onnx'}: an ONNX model; export the checkpoint "
                                "(or TorchScript file) it was exported from")
    assert not (tmp_path / out).exists()
    proc = run_main("export", "--weights", str(exported / "m.ts"), "--format", fmt, "--out", str(tmp_path / out))
    assert proc.returncode == 0, proc.stderr
    x = torch.rand(2, 3, 16, 112, 112)
    with torch.no_grad():
        again, first = (load_model(None, weights=str(p)).module(x) for p in (tmp_path / out, exported / "m.pt"))
    assert torch.allclose(again, first, atol=1e-4)


def test_a_backend_asked_for_an_exported_model_is_said_to_be_unused(exported, tmp_path):
    """Not refused: a config's backend is every camera's, and one camera may run an exported file."""
    clip = write_video(tmp_path / "c.mp4", seconds=1.2, size=(128, 96))
    proc = run_main("classify", str(clip), "--weights", str(exported / "m.ts"), "--backend", "torchscript",
                    "--device", "cpu", "--format", "json", env={"STREAMREC_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert (f"WARNING streamrec.runtime.classifier: --backend torchscript is not used for {exported / 'm.ts'}: an "
            "exported model runs as it is (its own runtime)") in proc.stderr
    assert json.loads(proc.stdout)["backend"] == "torchscript"  # what runs it, as /healthz names it too


def test_a_read_only_output_is_refused_before_any_work_also_for_root(tmp_path):
    """``os.access`` answers yes to root for any file; a file without write bits is read-only
    to streamrec for root too, and that is said before a training, not after it."""
    (tmp_path / "data").mkdir()
    out = tmp_path / "m.pt"
    out.write_bytes(b"last week's model")
    out.chmod(0o444)
    proc = run_main("train", str(tmp_path / "data"), "--out", str(out), "--overwrite")
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == f"streamrec: error: --out {out}: the file is read-only (it is not replaced)"
    assert out.read_bytes() == b"last week's model" and not (tmp_path / "m.pt.log.csv").exists()


@pytest.mark.parametrize("command, output", [("train", "--out"), ("lr-find", "--plot")])
def test_a_cache_dir_at_an_output_path_is_refused_before_any_work(tmp_path, command, output):
    (tmp_path / "data").mkdir()
    path = tmp_path / ("m.pt" if output == "--out" else "lr.png")
    proc = run_main(command, str(tmp_path / "data"), output, str(path), "--cache-dir", str(path))
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc) == f"streamrec: error: --cache-dir {path}: the file {output} writes; expected a folder of its own"
    assert not path.exists()
