"""benchmarks/zones.py runs end to end on a tiny input: four synthetic clips, a 320x180 mosaic, a few
seconds per run (the real clips and the figures: docs/performance.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.event_config import RuleConfig

from conftest import load_benchmark, motion_frames, write_frames


def synthetic_clips(folder, seconds: float = 5.0, fps: int = 25):
    """Four clips of squares moving four ways, listed in a clips.csv as the real clips are."""
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for name in ("left_to_right", "right_to_left", "top_to_bottom", "still"):
        frames = motion_frames(name if name != "still" else "left_to_right", int(seconds * fps), (160, 90), rng,
                               period=10**6 if name == "still" else 40)
        write_frames(folder / f"{name}.mp4", frames, fps)
        rows.append(f"{name}.mp4,{name.replace('_', ' ')}")
    (folder / "clips.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.slow
@pytest.mark.bench  # minutes: left out of the default run (pytest -m bench)
def test_the_harness_runs_on_a_tiny_input(tmp_path):
    zones = load_benchmark("zones")
    clips = synthetic_clips(tmp_path)
    out = tmp_path / "out"
    result = zones.main(["--clips", str(clips), "--size", "320x180", "--seconds", "6", "--warmup", "4",
                         "--epochs", "2", "--zones", "1,2", "--out-dir", str(out)])
    assert result["clips"] == [str(clips / f"{n}.mp4") for n in ("left_to_right", "right_to_left", "top_to_bottom",
                                                                     "still")]
    acc = result["accuracy"]
    assert sorted(acc["offline"]) == sorted(acc["live"]) == ["bl", "br", "tl", "tr"]
    for r in acc["offline"].values():
        assert r["windows"] >= 5 and 0.0 <= r["label_match_pct"] <= 100.0 and 0.0 <= r["max_score_diff"] <= 1.0
    for r in acc["live"].values():
        assert r["windows"] > 0 and r["paired"] > 0, acc["live"]  # each zone labelled and paired with its tile
    assert [r["zones"] for r in result["cost"]] == [0, 1, 2]
    assert [sorted(k for k in r["raw"]["labels_per_s"] if "/" in k) for r in result["cost"]] == [
        [], ["mosaic/z0"], ["mosaic/z0", "mosaic/z1"]]  # the whole frame alone, then the zones alone
    assert all(r["labels_per_s_per_stream"] > 0 for r in result["cost"])
    ev = result["events"]
    assert len(ev["discovery_sensors"]) == 4, ev  # one Home Assistant sensor per zone
    if "zones" in RuleConfig.__dataclass_fields__:  # rules scoped to zones: events of zone tl only
        assert set(ev) == {"events_by_zone", "discovery_sensors"} and set(ev["events_by_zone"]) == {"tl"}, ev
    else:  # a rule cannot name zones yet: the harness says so, and a whole-frame rule opens nothing here
        assert "unknown option 'zones'" in ev["missing"] and ev["events_by_zone"] == {}, ev
    assert json.loads((out / "zones.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "zones.md").read_text().startswith("Live (RTSP): a zone of the mosaic against its tile streamed alone")
