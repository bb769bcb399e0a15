"""Training that reports: a progress bar only on a terminal, top-k within the number of classes,
no random-weights warning while training, every file written named, a readable confusion matrix
and one as CSV."""

from __future__ import annotations

import csv
import fcntl
import os
import pty
import struct
import subprocess
import re
import termios

import numpy as np
import pytest

from conftest import ROOT, make_motion_dataset, run_main, streamrec_cmd
from streamrec.offline import evaluate as evaluate_module

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_motion_dataset(tmp_path_factory.mktemp("motion") / "data", per_class=4, valid=2, seconds=1.5,
                               size=(64, 48))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m.pt"
    proc = run_main("train", str(data), "--model", "tiny3d", "--weights", "none", "--epochs", "1", "--batch-size", "4",
                    "--workers", "0", "--out", str(out), "--allow-chance")  # one epoch: at chance
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.mark.slow
def test_training_names_its_files_says_top3_and_no_random_weights_warning(trained):
    out, proc = trained
    assert "meaningless" not in proc.stderr and "random weights" not in proc.stderr
    epoch = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch) == 1 and " top3 " in epoch[0] and "top5" not in epoch[0]
    assert (out.parent / "m.pt.log.csv").read_text().splitlines()[0] == \
        "epoch,train_loss,train_top1,train_top3,val_loss,val_top1,val_top3,lr"
    tail = proc.stderr.strip().splitlines()[-3:]
    assert tail == [f"wrote {out} (the checkpoint)", f"wrote {out}.state (the training state, for --resume)",
                    f"wrote {out}.log.csv (the log, a row per epoch)"]
    assert all(os.path.isfile(p) for p in (out, f"{out}.state", f"{out}.log.csv"))
    assert "\r" not in proc.stderr  # stderr is a pipe here: no progress bar


def _train_on_a_terminal(data, out, *extra: str) -> str:
    """train with stderr on a pseudo-terminal; everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(streamrec_cmd("train", str(data), "--model", "tiny3d", "--weights", "none", "--epochs", "1",
                                          "--batch-size", "4", "--workers", "0", "--out", str(out), "--allow-chance",
                                          *extra),
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_with_an_eta_unless_quiet(data, tmp_path):
    shown = _train_on_a_terminal(data, tmp_path / "a.pt")
    bar = [part for part in shown.split("\r") if part.startswith("epoch 1/1:")]
    assert bar and any(re.search(r"\[\d\d:\d\d<\d\d:\d\d, ", part) for part in bar), shown  # [elapsed<ETA, rate
    quiet = _train_on_a_terminal(data, tmp_path / "b.pt", "--quiet")
    assert "epoch 1/1:" not in quiet and "epoch   1: train loss" in quiet


@pytest.mark.slow
def test_dataset_says_where_it_wrote(data, tmp_path):
    proc = run_main("dataset", str(data), "--csv", str(tmp_path / "c.csv"), "--sheet", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-2:] == [f"wrote the catalog to {tmp_path / 'c.csv'}",
                                                      f"wrote the contact sheet (6 clips) to {tmp_path / 's.png'}"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_evaluate_writes_the_confusion_matrix_as_csv_and_reports_top3(trained, data, tmp_path):
    out, _ = trained
    path = tmp_path / "cm.csv"
    proc = run_main("evaluate", str(data / "valid"), "--weights", str(out), "--confusion", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "top-3 " in proc.stdout.splitlines()[0] and "top-5" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"confusion matrix: {path}"
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["true \\ predicted", "left_to_right", "right_to_left", "top_to_bottom"]
    assert [r[0] for r in rows[1:]] == rows[0][1:]
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.shape == (3, 3) and counts.sum() == 12 and (counts.sum(1) == 4).all()  # 2 clips x 2 windows a class


@pytest.mark.slow
def test_evaluate_of_clips_of_fewer_classes_than_the_model_says_so(trained, data, tmp_path):
    import shutil

    out, _ = trained
    shutil.copytree(data / "valid" / "left_to_right", tmp_path / "one" / "left_to_right")
    proc = run_main("evaluate", str(tmp_path / "one"), "--weights", str(out), "--confusion", str(tmp_path / "cm.csv"))
    assert proc.returncode == 0, proc.stderr
    assert ("warning: the clips hold 1 of the model's 3 classes (left_to_right): top-1 is how often those were found, "
            "not how well the model tells its classes apart") in proc.stderr.splitlines()
    proc = run_main("evaluate", str(data / "valid"), "--weights", str(out), "--confusion", str(tmp_path / "cm.csv"))
    assert proc.returncode == 0 and "classes (" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_evaluate_refuses_a_confusion_file_of_another_kind(trained, data, tmp_path):
    out, _ = trained
    proc = run_main("evaluate", str(data / "valid"), "--weights", str(out), "--confusion", str(tmp_path / "cm.txt"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"streamrec: error: --confusion {tmp_path / 'cm.txt'}: expected a file name ending "
                                   "in .csv, .png, .jpg, .jpeg, .svg, .pdf, got '.txt'")


def test_confusion_numbers_are_white_on_dark_cells_and_black_on_light(monkeypatch, tmp_path):
    seen = {}

    def capture(fig, path, **kw):
        seen.update({t.get_text(): t.get_color() for t in fig.axes[0].texts})

    monkeypatch.setattr(evaluate_module, "save_figure", capture)
    evaluate_module.plot_confusion(np.array([[20, 3], [0, 11]]), ["a", "b"], str(tmp_path / "cm.png"))
    assert seen == {"20": "white", "11": "white", "3": "black", "0": "black"}


@pytest.mark.slow
def test_lr_find_runs_on_its_own_options_and_names_its_plot(data, tmp_path):
    plot = tmp_path / "lr.png"
    proc = run_main("lr-find", str(data), "--model", "tiny3d", "--weights", "none", "--batch-size", "4", "--workers", "0",
                    "--steps", "10", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"suggested learning rate: \d\.\d\de[-+]\d\d \(plot: {re.escape(str(plot))}\)\n", proc.stdout)
    assert plot.read_bytes()[:4] == b"\x89PNG" and "meaningless" not in proc.stderr
