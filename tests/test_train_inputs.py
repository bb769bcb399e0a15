"""The offline commands never write into their own inputs: a checkpoint, a catalog or a plot
inside the dataset folder (it would replace a clip or read as one), the checkpoint a run starts
from, a cache inside the dataset; class folders whose names no model can carry are refused
before any work; random weights are never exported as a model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import error_line, run_main


@pytest.fixture
def data(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / cls / f"{cls}{i}.mp4").write_bytes(b"not a video")
    return tmp_path / "data"


@pytest.mark.parametrize("args, option", [
    (["train", "{data}", "--out", "{data}/a/a0.mp4"], "--out {data}/a/a0.mp4"),
    (["train", "{data}", "--out", "{data}/model.pt"], "--out {data}/model.pt"),
    (["dataset", "{data}", "--csv", "{data}/a/a1.mp4"], "--csv {data}/a/a1.mp4"),
    (["lr-find", "{data}", "--plot", "{data}/b/lr.png"], "--plot {data}/b/lr.png"),
    (["evaluate", "{data}", "--weights", "none", "--confusion", "{data}/a/c.csv"], "--confusion {data}/a/c.csv"),
])
def test_an_output_inside_the_dataset_is_refused_and_the_clip_is_left_as_it_is(data, args, option):
    got = error_line(run_main(*[a.format(data=data) for a in args]))
    assert got == (f"streamrec: error: {option.format(data=data)}: inside the dataset folder {data}; writing there "
                   "would change the dataset (write it beside the folder)")
    assert (data / "a" / "a0.mp4").read_bytes() == b"not a video"


def test_a_run_that_would_write_over_the_checkpoint_it_starts_from_is_refused(data, tmp_path):
    start = tmp_path / "start.pt"
    start.write_bytes(b"a checkpoint")
    got = error_line(run_main("train", str(data), "--weights", str(start), "--out", str(start)))
    assert got == f"streamrec: error: --out {start}: that is the input file {start}; writing there would replace it"
    assert start.read_bytes() == b"a checkpoint"


def test_a_cache_inside_the_dataset_is_refused(data):
    got = error_line(run_main("train", str(data), "--cache-dir", str(data / "cache"), "--out", str(data.parent / "m.pt")))
    assert got == (f"streamrec: error: --cache-dir {data / 'cache'}: inside the dataset folder {data}, where it would "
                   "read as a class folder; expected a folder outside it")


@pytest.mark.parametrize("name, shown", [("wave\nhand", "'wave\\nhand'"), ("x" * 201, repr("x" * 40))])
def test_a_class_folder_no_model_can_carry_is_refused_before_any_work(tmp_path, name, shown):
    for cls in (name, "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        (tmp_path / "d" / cls / "c.mp4").write_bytes(b"not a video")
    got = error_line(run_main("dataset", str(tmp_path / "d")))
    assert got.startswith(f"streamrec: error: dataset: class folders of {tmp_path / 'd'}: expected names of 1-200 "
                          "characters without control characters or line breaks, got ")
    assert got.endswith(" (rename the folder)")


def test_random_weights_are_never_exported(tmp_path):
    got = error_line(run_main("export", "--weights", "none", "--out", str(tmp_path / "none.ts")))
    assert got == ("streamrec: error: --weights none: expected trained weights to export (DEFAULT or a checkpoint "
                   "PATH), got random ones: their export would read as a trained model")
    assert not (tmp_path / "none.ts").exists()


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_a_class_none_of_whose_training_clips_can_be_read_is_refused_before_any_work(tmp_path, demo_clip, command):
    """A model would be trained (and saved) on a class it never saw."""
    import shutil

    for cls in ("a", "b"):
        (tmp_path / "d" / "train" / cls).mkdir(parents=True)
        (tmp_path / "d" / "valid" / cls).mkdir(parents=True)
        shutil.copy(demo_clip, tmp_path / "d" / "valid" / cls / "ok.mp4")
    shutil.copy(demo_clip, tmp_path / "d" / "train" / "b" / "ok.mp4")
    for i in range(2):
        (tmp_path / "d" / "train" / "a" / f"g{i}.mp4").write_bytes(b"not a video" * 100)
    out = ["--out", str(tmp_path / "m.pt")] if command == "train" else ["--steps", "10"]
    proc = run_main(command, str(tmp_path / "d"), "--model", "tiny3d", "--weights", "none", "--batch-size", "2", *out)
    assert error_line(proc) == (f"streamrec: error: dataset {tmp_path / 'd'}: class 'a' of train has no clip this "
                                f"machine can read (2 unreadable, e.g. {tmp_path / 'd' / 'train' / 'a' / 'g0.mp4'}); "
                                f"streamrec dataset {tmp_path / 'd'} lists them")
    assert not (tmp_path / "m.pt").exists()


def test_a_run_whose_validation_loss_is_never_a_number_is_said_to_diverge_and_is_not_saved(tmp_path):
    from streamrec.offline.chance import Chance, Keeper

    keeper = Keeper(tmp_path / "m.pt", Chance.of([0, 1, 0, 1]), allow_chance=True)
    assert keeper.warning() is not None and "diverged" not in keeper.warning()  # no epoch ran yet
    for epoch in (1, 2):
        keeper.update({"epoch": epoch, "val_loss": float("nan"), "val_top1": 0.5}, lambda: {"never": "saved"})
    assert keeper.warning() == ("warning: the training diverged: the validation loss was not a number in any epoch "
                                f"(lower --lr; streamrec lr-find suggests one)\nnot saved to {tmp_path / 'm.pt'}")
    assert not (tmp_path / "m.pt").exists() and not keeper.beats_chance


def test_clips_in_sub_folders_of_a_class_are_said_to_be_left_out_and_hidden_files_are_no_clips(tmp_path, caplog):
    import logging

    from streamrec.offline.dataset import class_dirs

    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        (tmp_path / "d" / cls / "c.mp4").write_bytes(b"x")
    (tmp_path / "d" / "a" / "sub").mkdir()
    (tmp_path / "d" / "a" / "sub" / "deep.mp4").write_bytes(b"x")
    (tmp_path / "d" / "b" / "._c.mp4").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="streamrec.offline.dataset"):
        got = class_dirs(tmp_path / "d")
    assert {c: [f.name for f in fs] for c, fs in got.items()} == {"a": ["c.mp4"], "b": ["c.mp4"]}
    assert [r.getMessage() for r in caplog.records] == [
        f"dataset: class folder {tmp_path / 'd' / 'a'} has sub-folders (sub): clips in them are not read (a class's "
        "clips lie in its folder itself)"]


def test_dataset_names_each_unreadable_clip_and_warns_of_a_single_class(tmp_path, demo_clip):
    import shutil

    (tmp_path / "one" / "train" / "lift").mkdir(parents=True)
    shutil.copyfile(demo_clip, tmp_path / "one" / "train" / "lift" / "good.mp4")
    (tmp_path / "one" / "train" / "lift" / "bad.mp4").write_bytes(b"not a video")
    proc = run_main("dataset", str(tmp_path / "one"), "--val-split", "0.5")
    assert proc.returncode == 0  # a listing: the dataset may be growing
    assert proc.stdout.splitlines()[1].split()[:3] == ["train", "lift", "1"]
    bad = tmp_path / "one" / "train" / "lift" / "bad.mp4"
    warnings = [line.split(": ", 1)[1] for line in proc.stderr.splitlines() if " WARNING " in line or "warning:" in line]
    assert f"unreadable clip {bad} (no video stream this machine can decode): train and evaluate skip it" in warnings
    assert (f"dataset {tmp_path / 'one'}: expected at least 2 class folders to tell apart, got ['lift']: train refuses "
            "it") in warnings


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.001, max_value=0.999))
def test_the_clips_a_val_split_needs_are_the_fewest_it_splits(val_split):
    from streamrec.offline.dataset import clips_to_split

    def splits(n: int) -> bool:  # discover holds out round(n * val_split) clips: one or more on each side
        return 1 <= round(n * val_split) < n

    n = clips_to_split(val_split)
    assert splits(n) and not any(splits(k) for k in range(2, n))
