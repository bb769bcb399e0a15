"""Numbers users type are bounded where a larger one would crash, hang or exhaust the machine:
each is one line naming the option, exit 2, before anything runs (in process, through
``main(argv)``), and config numbers no float holds are refused at start, never a traceback."""

from __future__ import annotations

import pytest

from conftest import ROOT, error_line, run_main

CLIP = str(ROOT / "demo" / "clips" / "arm_wrestling.mp4")
HUGE = "1" + "0" * 400


@pytest.mark.parametrize("args, line", [
    (["classify", CLIP, "--model", "tiny3d", "--weights", "none", "--stride", "1e-300"],
     "--stride: expected 0.01 to 86400 seconds between windows, got 1e-300"),
    (["classify", CLIP, "--model", "tiny3d", "--weights", "none", "--stride", "1e9"],
     "--stride: expected 0.01 to 86400 seconds between windows, got 1000000000.0"),
    (["classify", CLIP, "--top", "99999999999"], "streamrec classify: --top: expected a whole number up to "
                                                 "1000, got '99999999999'"),
    (["classify", CLIP, "--batch-size", "99999"], "streamrec classify: --batch-size: expected a "
                                                  "whole number up to 4096, got '99999'"),
    (["bench", "--models", "tiny3d", "--batches", "99999999999999999999"],
     "--batches: expected comma-separated batch sizes 1..4096, got '99999999999999999999'"),
    (["bench", "--models", "tiny3d", "--batches", "\u0661"], "--batches: expected comma-separated batch sizes 1..4096, got '\u0661'"),
    (["train", "DATA", "--workers", "99999999999"], "streamrec train: --workers: expected a whole "
                                                    "number up to 64, got '99999999999'"),
    (["train", "DATA", "--batch-size", "99999999999999999999"], "streamrec train: --batch-size: "
                                                               "expected a whole number up to 4096, got '99999999999999999999'"),
    (["lr-find", "DATA", "--seed", "99999999999999999999"], "streamrec lr-find: --seed: expected a whole "
                                                            "number up to 4294967295, got '99999999999999999999'"),
    (["lr-find", "DATA", "--steps", "99999999"], "streamrec lr-find: --steps: expected a whole number up to 10000, "
                                                 "got '99999999'"),
    (["lr-find", "DATA", "--steps", "9"], "--steps: expected a whole number from 10 to 10000, got 9"),  # no curve
    (["cluster", "--config", "x.toml", "--replicas", "99999999999999999999"],
     "streamrec cluster: --replicas: expected a whole number up to 1024, got '99999999999999999999'"),
])
def test_a_number_too_large_to_run_is_one_line(args, line):
    assert error_line(run_main(*args)) == f"streamrec: error: {line}"


@pytest.mark.parametrize("toml, line", [
    (f"[[rules]]\nname = 'r'\nlabels = ['a']\nmin_seconds = {HUGE}", "[[rules]] 'r': min_seconds: expected a number of "
                                                                    "at most 1e9 in size"),
    (f"history_days = {HUGE}", "history_days: expected a number of at most 1e9 in size"),
    (f"[smoothing]\nhold = {HUGE}", "smoothing.hold: expected a number of at most 1e9 in size"),  # a whole number too
    (f"max_connections = {HUGE}", "max_connections: expected a number of at most 1e9 in size"),
    ("port = " + "1" * 5000, "--config {cfg}: not valid TOML: Exceeds the limit (4300 digits) for integer string conversion: value has "
                               "5000 digits"),
    ("history_days = 40000", "{cfg}: history_days: expected > 0 and at most 36500, got 40000"),
    (f"batch_wait_ms = {HUGE}", "batch_wait_ms: expected a number of at most 1e9 in size"),
    ("batch_wait_ms = 100000", "batch_wait_ms: expected at most 10000, got 100000"),
    ("stride_ms = 1e300", "stride_ms: expected a number of at most 1e9 in size"),
    (f"[recording]\nmax_gb = {HUGE}", "[recording] max_gb: expected a number of at most 1e9 in size"),
    (f"[notify]\ndegraded_after_seconds = {HUGE}", "[notify] degraded_after_seconds: expected a number of at most 1e9"),
    ("[notify.webhook]\nurl = 'http://127.0.0.1:9/'\nsecret = 'x'\ntimeout = 7200",
     "[notify.webhook] timeout: expected > 0 and at most 3600 seconds, got 7200"),
])
def test_a_config_number_beyond_any_use_is_one_line(tmp_path, toml, line):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"source = '{CLIP}'\nmodel = 'tiny3d'\nweights = 'none'\n{toml}\n")
    got = error_line(run_main("serve", "--config", str(cfg), "--port", "0"))
    assert got.startswith(f"streamrec: error: {line.format(cfg=cfg)}") and len(got) < 300


@pytest.mark.parametrize("token, shown", [(" ", "a space"), ("\u200b", "\\u200b"), ("a\nb", "\\n"), ("tok\x1b[31m", "\\x1b"),
                                          ("s3cret ", "a space")])
def test_a_blank_or_invisible_token_is_refused(token, shown):
    got = error_line(run_main("serve", "--source", CLIP, "--host", "0.0.0.0", "--token", token))
    assert got == ("streamrec: error: --token: expected visible characters without spaces (a blank or invisible token "
                   f"would let anyone in), got a token with {shown}")
    assert error_line(run_main("serve", "--source", CLIP, "--host", "0.0.0.0", env={"STREAMREC_TOKEN": token})) == got


def test_history_limit_is_checked_before_the_database_is_looked_for(tmp_path):
    assert error_line(run_main("history", "--limit", "-1", env={"XDG_DATA_HOME": str(tmp_path)})) == (
        "streamrec: error: --limit: expected >= 1, got -1")


@pytest.mark.parametrize("db, line", [("5", "db: expected a string, got 5"),  # as serve says it
                                      ("'FOLDER'", "db: expected a history database file, got 'FOLDER' (a folder)")])
def test_a_config_db_that_is_no_database_is_one_line(tmp_path, db, line):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"db = {db.replace('FOLDER', str(tmp_path))}\n")
    for command in ("history", "events"):
        got = error_line(run_main(command, "--config", str(cfg)))
        assert got.endswith(line.replace("FOLDER", str(tmp_path))), got
