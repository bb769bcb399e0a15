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
