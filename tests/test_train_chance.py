"""Training that does not pretend: a model no better than chance is not saved (unless asked), the
default and the suggested learning rates train, a frozen random backbone is refused, and a
--val-split is the same split for dataset, train and evaluate."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from conftest import make_motion_dataset, run_main
from streamrec.errors import StreamrecError
from streamrec.offline.dataset import discover
from streamrec.offline.lrfind import SUGGESTION_RANGE, suggest
from streamrec.offline.chance import Chance
from streamrec.offline.train import TrainConfig

pytestmark = pytest.mark.timeout(900)

TINY = ("--model", "tiny3d", "--workers", "0", "--no-flip")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Too few clips for one epoch to learn anything."""
    return make_motion_dataset(tmp_path_factory.mktemp("small") / "data", per_class=4, valid=2, seconds=1.2,
                               size=(64, 48))


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Directions of motion, 7 training and 3 validation clips a class: enough for tiny3d to learn."""
    return make_motion_dataset(tmp_path_factory.mktemp("separable") / "data", per_class=10, valid=3, seconds=1.2,
                               size=(64, 48))


def val_metrics(stderr: str) -> list[tuple[float, float]]:
    return [(float(m[1]), float(m[2])) for m in re.finditer(r"val loss (\S+) top1 (\S+)", stderr)]


def test_chance_is_the_largest_class_share_and_the_loss_of_guessing_the_shares():
    c = Chance.of([0, 0, 0, 1])
    assert c.top1 == 0.75 and c.loss == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert not c.beaten_by(top1=0.75, loss=0.01)  # always answering class 0 scores 0.75
    assert not c.beaten_by(top1=1.0, loss=c.loss * 0.96)  # a loss at the guess's has learnt nothing
    assert c.beaten_by(top1=1.0, loss=c.loss * 0.9)
    assert Chance.of([0, 1, 2, 3, 4]).loss == pytest.approx(math.log(5))


@pytest.mark.slow
def test_a_model_at_chance_is_not_saved_and_an_older_file_is_kept(small, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"the model of last week")
    proc = run_main("train", str(small), *TINY, "--epochs", "1", "--batch-size", "4", "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [  # never replaced unasked
        f"streamrec: error: --out {out}: an earlier run's m.pt would be replaced; give another --out, --resume to go on "
        "with that run, or --overwrite"]
    proc = run_main("train", str(small), *TINY, "--epochs", "1", "--batch-size", "4", "--out", str(out), "--overwrite")
    assert proc.returncode == 1, proc.stderr
    (vl, v1), = val_metrics(proc.stderr)
    assert v1 <= 1 / 3 + 1e-6 or vl >= 0.95 * math.log(3)  # what the run itself reported: chance
    lines = proc.stderr.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning: the model does no better than chance"))
    assert f"guessing: top-1 0.333, loss {math.log(3):.4f}" in lines[warning]
    assert lines[warning + 1] == (f"not saved to {out}: try more clips or --epochs, another --lr (streamrec lr-find), "
                                  "or pass --allow-chance to save it anyway")
    assert lines[warning + 2:] == [f"wrote {out}.state (the training state, for --resume)",
                                   f"wrote {out}.log.csv (the log, a row per epoch)"]
    assert out.read_bytes() == b"the model of last week"
    assert "Traceback" not in proc.stderr

    proc = run_main("train", str(small), *TINY, "--epochs", "1", "--batch-size", "4", "--out", str(out),
                    "--allow-chance")
    assert proc.returncode == 2 and "an earlier run's m.pt, m.pt.log.csv, m.pt.state would be replaced" in proc.stderr
    proc = run_main("train", str(small), *TINY, "--epochs", "1", "--batch-size", "4", "--out", str(out),
                    "--allow-chance", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert f"saved to {out} anyway (--allow-chance)" in proc.stderr and f"wrote {out} (the checkpoint)" in proc.stderr
    import torch

    assert torch.load(out, weights_only=False)["classes"] == ["left_to_right", "right_to_left", "top_to_bottom"]


@pytest.mark.slow
def test_the_default_learning_rate_trains_tiny3d_beyond_chance(separable, tmp_path):
    out = tmp_path / "m.pt"
    proc = run_main("train", str(separable), *TINY, "--out", str(out))  # no --lr, no --epochs
    assert proc.returncode == 0, proc.stderr
    assert "training every layer (from random initial weights: a frozen random backbone would leave the head only " \
           "noise), " \
           "--lr 0.003 (the default for this)" in proc.stderr
    best = max(v1 for _, v1 in val_metrics(proc.stderr))
    assert best > 1 / 3 and "no better than chance" not in proc.stderr and out.is_file()


@pytest.mark.slow
def test_the_suggested_learning_rate_trains_beyond_chance(separable, tmp_path):
    proc = run_main("lr-find", str(separable), *TINY, "--plot", str(tmp_path / "lr.png"))
    assert proc.returncode == 0, proc.stderr
    lr = proc.stdout.split("suggested learning rate: ")[1].split()[0]
    assert SUGGESTION_RANGE[0] <= float(lr) <= SUGGESTION_RANGE[1]
    out = tmp_path / "m.pt"
    proc = run_main("train", str(separable), *TINY, "--lr", lr, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"--lr {float(lr):g}\n" in proc.stderr and out.is_file()


@pytest.mark.parametrize("losses", [
    [1.1, 1.1, 1.0, 0.7, 0.5, 0.45, 2.0, 1.0, 0.1, 30.0],  # blown up, then a lucky batch at a huge rate
    [1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.0, 0.6, 0.3, 0.2],  # still falling at 1.0
    [0.9, 1.2, 1.5, 2.0, 3.0, 5.0, 8.0, 9.0, 9.5, 9.9],  # only rising
])
def test_the_suggestion_stays_below_the_minimum_and_within_range(losses):
    lrs = np.logspace(-6, 0, len(losses))
    s = suggest(lrs, losses)
    assert SUGGESTION_RANGE[0] <= s <= SUGGESTION_RANGE[1]
    assert s <= lrs[int(np.argmin(losses))] / 3 or s == SUGGESTION_RANGE[0]


@pytest.mark.parametrize("model, weights, why", [
    ("tiny3d", "DEFAULT", "tiny3d has no pretrained ones"),
    ("tiny3d", "none", "--weights none"),
    ("r2plus1d_18", "None", "--weights none"),
])
def test_a_frozen_random_backbone_is_refused(model, weights, why):
    with pytest.raises(StreamrecError) as info:
        TrainConfig(data="DATA", model=model, weights=weights, freeze_backbone=True)
    assert str(info.value).startswith(f"--freeze-backbone: the backbone of {model} would keep random weights ({why}), ")
    assert TrainConfig(data="DATA", model=model, weights=weights).head_only is False  # the default: every layer
    assert TrainConfig(data="DATA", model=model, weights=weights).peak_lr == 3e-3


def test_pretrained_weights_train_the_head_by_default():
    cfg = TrainConfig(data="DATA", model="r2plus1d_18")
    assert (cfg.head_only, cfg.peak_lr) == (True, 1e-3)
    cfg = TrainConfig(data="DATA", model="r2plus1d_18", freeze_backbone=False)
    assert (cfg.head_only, cfg.peak_lr) == (False, 3e-3)
    assert TrainConfig(data="DATA", model="r2plus1d_18", lr=5e-4).peak_lr == 5e-4


@pytest.mark.slow
def test_the_cli_refuses_a_frozen_random_backbone_in_one_line(small):
    proc = run_main("train", str(small), "--model", "tiny3d", "--freeze-backbone")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "streamrec: error: --freeze-backbone: the backbone of tiny3d would keep random weights (tiny3d has no "
        "pretrained ones), and a head on a frozen random backbone learns from noise; train every layer "
        "(--finetune-all, the default for random weights) or start from pretrained weights or a checkpoint"]


@pytest.mark.slow
def test_val_split_is_one_split_for_dataset_train_and_evaluate(small, tmp_path):
    flat = tmp_path / "flat"  # one folder of classes, no valid/
    for cls in ("left_to_right", "top_to_bottom"):
        (flat / cls).mkdir(parents=True)
        for f in sorted((small / "train" / cls).glob("*.mp4")) + sorted((small / "valid" / cls).glob("*.mp4")):
            (flat / cls / f.name).write_bytes(f.read_bytes())
    held = sorted(str(s.path) for s in discover(flat, val_split=0.5)["valid"].samples)
    trained_on = {str(s.path) for s in discover(flat, val_split=0.5)["train"].samples}
    assert len(held) == 4 and len(trained_on) == 4 and not trained_on & set(held)

    proc = run_main("dataset", str(flat), "--val-split", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert f"--val-split 0.5 holds out 4 clips, the same ones for 'train {flat} --val-split 0.5' and " \
           f"'evaluate {flat} --val-split 0.5'" in proc.stderr
    out = tmp_path / "m.pt"
    proc = run_main("train", str(flat), *TINY, "--val-split", "0.5", "--seed", "7", "--epochs", "1", "--batch-size", "3",
                    "--allow-chance", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = run_main("evaluate", str(flat), "--val-split", "0.5", "--weights", str(out), "--json",
                    "--confusion", str(tmp_path / "cm.csv"))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert sorted(r["paths"]) == held and r["clips"] == 4 and r["windows"] == 8
    assert sum(r["per_class"][c]["support"] for c in r["per_class"]) == 8
    assert r["training_clips"] == 0 and "warning" not in proc.stderr

    proc = run_main("evaluate", str(flat), "--weights", str(out), "--json", "--confusion", str(tmp_path / "cm.csv"))  # every clip: the training ones too
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (r["clips"], r["training_clips"]) == (8, 4)
    assert "warning: 4 of the 8 clips evaluated are clips this model was trained on, so the scores overstate it" \
        in proc.stderr
