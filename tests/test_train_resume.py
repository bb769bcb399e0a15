"""`streamrec train --resume` with a state that does not fit the run: one line naming the state
file, what it holds and what was asked, exit 2; never a traceback."""

from __future__ import annotations

import pytest
import torch

from conftest import DIRECTIONS, make_motion_dataset
from streamrec.cli.main import main
from streamrec.models.registry import build_model
from streamrec.offline.resume import meta

ASKED = "model tiny3d (every layer) with 3 classes (left_to_right, right_to_left, top_to_bottom)"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_motion_dataset(tmp_path_factory.mktemp("d"), per_class=2, valid=1, seconds=0.4, size=(64, 48))


def _state(net: torch.nn.Module, **extra) -> dict:
    opt = torch.optim.AdamW(net.parameters())
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 0, "step": 1, **extra}


def _good_state_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.state"
    torch.save(_state(build_model("tiny3d", num_classes=3), **meta("tiny3d", sorted(DIRECTIONS), False)), path)
    return path.read_bytes()


STATES = {  # what is written at <out>.state -> what the error line says
    "two classes, no meta": (lambda tmp: _state(build_model("tiny3d", num_classes=2)),
                             "holds the training state of another model (Error(s) in loading state_dict"),
    "another model, no meta": (lambda tmp: _state(torch.nn.Linear(3, 2)), "holds the training state of another model"),
    "another --model": (lambda tmp: _state(torch.nn.Linear(3, 2), **meta("x3d_s", sorted(DIRECTIONS), False)),
                        "holds the training state of model x3d_s (every layer) with 3 classes"),
    "other class names": (lambda tmp: _state(build_model("tiny3d", num_classes=3),
                                             **meta("tiny3d", ["a", "b", "c"], False)),
                          "holds the training state of model tiny3d (every layer) with 3 classes (a, b, c)"),
    "head only": (lambda tmp: _state(build_model("tiny3d", num_classes=3), **meta("tiny3d", sorted(DIRECTIONS), True)),
                  "holds the training state of model tiny3d (the head only) with 3 classes"),
    "another --val-split": (lambda tmp: _state(build_model("tiny3d", num_classes=3), **meta("tiny3d", sorted(DIRECTIONS), False),
                                               val_split=0.5),
                            "was trained with --val-split 0.5, but this run asks for no --val-split: clips it trained on "
                            "would be validated on"),
    "corrupt": (lambda tmp: b"\x00garbage" * 50, "is not a readable training state (corrupt or truncated"),
    "truncated": (lambda tmp: _good_state_bytes(tmp)[:3000], "is not a readable training state (corrupt or truncated"),
    "empty": (lambda tmp: b"", "is not a readable training state (corrupt or truncated"),
    "a list": (lambda tmp: [1, 2], "is not a training state (expected model, optimizer, epoch, step"),
    "missing keys": (lambda tmp: {"model": {}}, "is not a training state (expected model, optimizer, epoch, step"),
    "epoch not a number": (lambda tmp: {**_state(build_model("tiny3d", num_classes=3)), "epoch": "1"},
                           "is not a training state (expected model, optimizer, epoch, step"),
    # the early stopping's values: read back as numbers and rows of numbers
    "best not a number": (lambda tmp: {**_state(build_model("tiny3d", num_classes=3)), "best": "x"},
                          "is not a training state (expected best as training writes it, got 'x')"),
    "stale not a count": (lambda tmp: {**_state(build_model("tiny3d", num_classes=3)), "stale": -1},
                          "is not a training state (expected stale as training writes it, got -1)"),
    "stale infinite": (lambda tmp: {**_state(build_model("tiny3d", num_classes=3)), "stale": float("inf")},
                       "is not a training state (expected stale as training writes it, got inf)"),
    "a row without its numbers": (lambda tmp: {**_state(build_model("tiny3d", num_classes=3)), "best_row": {"x": 1}},
                                  "is not a training state (expected best_row as training writes it, got {'x': 1})"),
    "val_split not a share": (lambda tmp: {**_state(build_model("tiny3d", num_classes=3)), "val_split": "x"},
                              "is not a training state (expected val_split as training writes it, got 'x')"),
}


@pytest.mark.parametrize("case", list(STATES))
def test_resume_from_a_state_that_does_not_fit_is_one_line(data, tmp_path, capsys, case):
    make, expected = STATES[case]
    out = tmp_path / "m.pt"
    state = out.with_name("m.pt.state")
    content = make(tmp_path)
    if isinstance(content, bytes):
        state.write_bytes(content)
    else:
        torch.save(content, state)
    rc = main(["train", str(data), "--model", "tiny3d", "--weights", "none", "--batch-size", "2", "--no-flip",
               "--epochs", "2", "--out", str(out), "--resume", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("streamrec: error:")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"streamrec: error: --resume: {state} "), lines[0]
    assert expected in lines[0], lines[0]
    if "holds the training state" in expected:
        assert f"but this run asked for {ASKED}" in lines[0]
    assert not out.exists()


def test_resume_with_fewer_classes_than_the_saved_run_names_both(data, tmp_path, capsys):
    import shutil

    out = tmp_path / "m.pt"
    args = ["--model", "tiny3d", "--weights", "none", "--batch-size", "2", "--no-flip", "--out", str(out),
            "--workers", "0", "--quiet", "--allow-chance"]
    assert main(["train", str(data), *args, "--epochs", "1"]) == 0
    fewer = tmp_path / "fewer"
    shutil.copytree(data, fewer, ignore=shutil.ignore_patterns("top_to_bottom"))
    capsys.readouterr()
    assert main(["train", str(fewer), *args, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (f"streamrec: error: --resume: {out}.state holds the training state of {ASKED}, but this run asked for "
            "model tiny3d (every layer) with 2 classes (left_to_right, right_to_left); ") in err, err


def test_a_state_that_cannot_be_read_says_so(tmp_path, monkeypatch):
    from streamrec.errors import StreamrecError
    from streamrec.offline import resume

    state = tmp_path / "m.pt.state"
    state.write_bytes(b"x")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(state))

    monkeypatch.setattr(resume.torch, "load", denied)
    with pytest.raises(StreamrecError) as info:
        resume.read_state(state)
    assert str(info.value) == f"--resume: cannot read {state}: Permission denied"


def test_resume_goes_on_with_the_runs_options_or_names_those_that_differ(data, tmp_path, capsys, caplog):
    """A run trained with --batch-size 2, resumed without it, went on at the default 8 with its
    step count past the schedule's end (every step at lr 0). The options left out are the run's;
    one given with another value is said before any model is loaded. Only --epochs may change."""
    out = tmp_path / "m.pt"
    common = ["--out", str(out), "--workers", "0", "--quiet", "--allow-chance"]
    assert main(["train", str(data), "--model", "tiny3d", "--weights", "none", "--no-flip", "--batch-size", "2",
                 "--epochs", "1", *common]) == 0
    capsys.readouterr()
    assert main(["train", str(data), *common, "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"streamrec: error: --resume: {out}.state goes on with a run of --batch-size 2, --lr (default), but this run "
        "asks for --batch-size 4, --lr 0.01; resume with the run's options (only --epochs may change), or train afresh "
        "without --resume"]
    caplog.set_level("INFO", logger="streamrec")
    assert main(["train", str(data), *common, "--epochs", "2", "--resume"]) == 0  # no --model, --weights...: the run's
    assert "epoch   2:" in capsys.readouterr().err
    assert "--resume: going on with the run's --model tiny3d, --weights none, --batch-size 2, --flip False" in caplog.messages
    assert "resuming at epoch 2 of 2" in caplog.messages


def test_resuming_a_finished_run_that_saved_no_model_is_not_a_success(data, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="streamrec.offline.train")
    out = tmp_path / "m.pt"
    state = {**_state(build_model("tiny3d", num_classes=3)), **meta("tiny3d", sorted(DIRECTIONS), False), "epoch": 1}
    torch.save(state, out.with_name("m.pt.state"))  # two epochs done, no checkpoint: none beat chance
    rc = main(["train", str(data), "--model", "tiny3d", "--weights", "none", "--no-flip", "--epochs", "2",
               "--out", str(out), "--resume", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and caplog.messages == []  # no "resuming at epoch 3" of a run that does not go on
    assert err.strip().splitlines()[-1] == (f"streamrec: nothing to train: the state of {out} has done all 2 epochs "
                                            f"(raise --epochs to train on); it saved no model at {out}")
