"""``--weights`` that cannot be weights: said once, in one line, naming what the path is."""

from __future__ import annotations

import pytest

from conftest import error_line, run_main, write_video

CHILD = "preparing it in a child process"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "c.mp4", seconds=1.2, size=(128, 96))


def test_a_folder_is_called_a_folder(clip, tmp_path):
    proc = run_main("classify", str(clip), "--weights", str(tmp_path), "--device", "cpu")
    assert error_line(proc) == f"streamrec: error: --weights: expected DEFAULT, none or a file, got {str(tmp_path)!r} (a folder)"
    assert CHILD not in proc.stderr


def test_a_folder_through_the_library():
    from streamrec.errors import WeightsError
    from streamrec.models.registry import load_model

    with pytest.raises(WeightsError, match=r"^--weights: expected DEFAULT, none or a file, got '/' \(a folder\)$"):
        load_model("tiny3d", weights="/")


def test_a_file_that_is_no_torch_file_is_refused_before_any_load(clip, tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"garbage, not a torch file\n")
    proc = run_main("classify", str(clip), "--weights", str(bad), "--device", "cpu",
                    env={"STREAMREC_CACHE": str(tmp_path / "cache")})
    assert error_line(proc) == (f"streamrec: error: --weights: {bad} is not a file torch.save wrote "
                                "(expected a state_dict, a streamrec checkpoint, TorchScript or ONNX)")
    assert CHILD not in proc.stderr


@pytest.mark.slow
def test_a_damaged_torch_file_is_loaded_by_one_child_only(clip, tmp_path):
    """It used to be loaded by two children (the command's first-start step, then the library's)
    and then once more in the process; now the command's child and the process that reports it."""
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a zip's signature, then nothing a zip needs
    proc = run_main("classify", str(clip), "--weights", str(bad), "--device", "cpu",
                    env={"STREAMREC_CACHE": str(tmp_path / "cache")})
    assert "damaged or incomplete" in error_line(proc)
    assert proc.stderr.count(CHILD) == 1, proc.stderr


@pytest.mark.slow
def test_a_failed_download_writes_only_its_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    """torch.hub's own "Downloading:" line went to stdout, where classify's results go; a failed
    download leaves no partial weights file where the whole one belongs."""
    import socket

    from streamrec.errors import WeightsError
    from streamrec.models.registry import load_model

    with socket.socket() as refusing:  # a proxy port that refuses at once
        refusing.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
    monkeypatch.delenv("STREAMREC_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(key, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(WeightsError, match=r"^--weights DEFAULT: file r2plus1d_18-91a641e6\.pth is not in the torch hub "
                                           r"cache .* \(download failed: URLError: "):
        load_model("r2plus1d_18", weights="DEFAULT")
    captured = capsys.readouterr()
    assert captured.out == "" and "Downloading" not in captured.err
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def checkpoint_with(**changes):
    """A tiny3d checkpoint of two classes, with ``changes`` to its entries (``None``: the entry removed)."""
    from streamrec.models.registry import build_model, make_checkpoint, model_spec

    ckpt = make_checkpoint(build_model("tiny3d", num_classes=2), model="tiny3d", classes=["a", "b"],
                           spec=model_spec("tiny3d"))
    for key, value in changes.items():
        ckpt.pop(key) if value is None else ckpt.__setitem__(key, value(ckpt) if callable(value) else value)
    return ckpt


def nan_in_first_weight(ckpt):
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    state["stem.0.weight"][0] = float("nan")
    return state


@pytest.mark.parametrize("changes, error", [
    ({"state_dict": None}, "state_dict: expected a table of tensors, got NoneType"),
    ({"state_dict": [1, 2]}, "state_dict: expected a table of tensors, got list"),
    ({"state_dict": lambda c: {**c["state_dict"], "stem.0.weight": 3}},
     "state_dict: expected names and tensors, got 'stem.0.weight': int"),
    ({"state_dict": nan_in_first_weight}, "state_dict: expected finite values, got NaN or infinity in 'stem.0.weight'"),
    ({"preprocess": {}}, "preprocess: expected 'resize', got none"),
    ({"preprocess": "x"}, "preprocess: expected a table of resize, crop, mean, std, got str"),
    ({"preprocess": lambda c: {**c["preprocess"], "crop": [100000, 100000]}},
     "preprocess: crop: expected (H, W) of 1..1024, got (100000, 100000)"),
    ({"preprocess": lambda c: {**c["preprocess"], "frames": 0}}, "preprocess: frames: expected 1..256, got 0"),
    ({"preprocess": lambda c: {**c["preprocess"], "fps": float("nan")}},
     "preprocess: fps: expected > 0 and at most 240.0, got nan"),
    ({"preprocess": lambda c: {**c["preprocess"], "resize": [100, 100]}},
     "preprocess: crop: expected at most the resized size (100, 100), got (112, 112)"),
    ({"preprocess": lambda c: {**c["preprocess"], "resize": "12"}}, "preprocess: resize: expected a list of numbers, got '12'"),
    ({"preprocess": lambda c: {**c["preprocess"], "std": [0, 0, 0]}},
     "preprocess: mean/std: expected 3 finite values each, std > 0, got (0.43216, 0.394666, 0.37645)/(0.0, 0.0, 0.0)"),
])
def test_a_checkpoint_whose_entries_are_not_what_train_writes_is_one_line(tmp_path, changes, error):
    """Every part of a checkpoint is read as data from a file: a missing, mistyped or absurd
    entry (a NaN weight labels every window NaN; a 100000-pixel crop asks for terabytes) is a
    WeightsError naming it, never a KeyError, a TypeError or an allocation."""
    import torch

    from streamrec.errors import WeightsError
    from streamrec.models.registry import load_model

    path = tmp_path / "m.pt"
    torch.save(checkpoint_with(**changes), path)
    with pytest.raises(WeightsError) as info:
        load_model(None, weights=str(path))
    assert str(info.value) == f"--weights {path}: {error}"


def test_a_bare_state_dict_of_a_model_without_kinetics_classes_says_what_it_needs(clip, tmp_path):
    import torch

    from streamrec.models.registry import build_model

    path = tmp_path / "tiny.pt"
    torch.save(build_model("tiny3d", num_classes=400).state_dict(), path)
    proc = run_main("classify", str(clip), "--model", "tiny3d", "--weights", str(path), "--device", "cpu",
                    env={"STREAMREC_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_line(proc) == (f"streamrec: error: --weights {path}: a bare state_dict, but tiny3d has no Kinetics-400 "
                                "classes to give it; expected a streamrec checkpoint (streamrec train writes one), "
                                "which carries its class names")


@pytest.mark.parametrize("meta, error", [
    ("not json", "its streamrec.json metadata: expected JSON, got 'not json'"),
    ("[" * 100_000, "its streamrec.json metadata: expected JSON, got '" + "[" * 40 + "... (100,000 characters)'"),
    ('{"model": "zzz", "classes": ["a", "b"]}', "model: expected one of r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v1_b, "
                                                "mvit_v2_s, swin3d_t, swin3d_s, swin3d_b, tiny3d, got 'zzz'"),
    ('{"model": "tiny3d", "classes": ["a", "b"]}', "preprocess: expected a table of resize, crop, mean, std, got NoneType"),
])
def test_an_exported_file_whose_metadata_is_not_streamrecs_is_one_line(tmp_path, meta, error):
    import torch

    from streamrec.errors import WeightsError
    from streamrec.models.exported import EXPORT_META, load_exported

    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path), _extra_files={EXPORT_META: meta})
    with pytest.raises(WeightsError) as info:
        load_exported(path)
    assert str(info.value) == f"--weights {path}: {error}"
