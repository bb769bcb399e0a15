import numpy as np
import pytest

from streamrec.live.smoothing import LabelSmoother, SmoothingConfig


def onehotish(k: int, n: int = 4, p: float = 0.8) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[k] = p
    return v


def test_single_flicker_is_suppressed():
    s = LabelSmoother(SmoothingConfig(alpha=0.5, margin=0.05, hold=2, threshold=0.2))
    shown = [s.update(onehotish(k)).label_index for k in [0, 0, 0, 1, 0, 0, 2, 0]]
    assert shown == [0] * 8


def test_switch_delay_is_bounded():
    cfg = SmoothingConfig(alpha=0.5, margin=0.05, hold=2, threshold=0.2)
    s = LabelSmoother(cfg)
    for _ in range(5):
        s.update(onehotish(0))
    shown = [s.update(onehotish(1)).label_index for _ in range(5)]
    # EMA after k new windows: old 0.8 -> 0.433 -> 0.25, new 0.067 -> 0.433 -> 0.617: it
    # leads by the margin from the 2nd window, and is shown after `hold` = 2 such windows
    assert shown == [0, 0, 1, 1, 1]


def test_low_scores_are_uncertain_but_keep_raw_top1():
    s = LabelSmoother(SmoothingConfig(alpha=1.0, threshold=0.5))
    out = s.update(np.array([0.3, 0.3, 0.4]))
    assert out.uncertain and out.raw_index == 2 and out.raw_score == pytest.approx(0.4)


def test_alpha_one_means_no_smoothing():
    s = LabelSmoother(SmoothingConfig(alpha=1.0, margin=0.0, hold=1, threshold=0.0))
    assert [s.update(onehotish(k)).label_index for k in [0, 1, 2, 3]] == [0, 1, 2, 3]


def test_ema_value_is_exact():
    s = LabelSmoother(SmoothingConfig(alpha=0.25, hold=1))
    s.update(np.array([1.0, 0.0]))
    out = s.update(np.array([0.0, 1.0]))
    assert out.scores.tolist() == [0.75, 0.25]


@pytest.mark.parametrize("kw", [{"alpha": 0}, {"alpha": 1.5}, {"hold": 0}, {"margin": -0.1}, {"threshold": 1.0}])
def test_config_validates(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        SmoothingConfig(**kw)


def test_a_batch_update_equals_each_smoother_on_its_own():
    """update_many (the live worker's path) gives every camera exactly what update() gives it
    alone: per-camera alpha, a reset camera starting afresh mid-run, ties and switches."""
    from streamrec.live.smoothing import update_many

    configs = [SmoothingConfig(alpha=0.5, margin=0.05, hold=2, threshold=0.3),
               SmoothingConfig(alpha=0.2, margin=0.0, hold=1, threshold=0.0),
               SmoothingConfig(alpha=1.0, margin=0.1, hold=3, threshold=0.5)]
    batched, alone = [LabelSmoother(c) for c in configs], [LabelSmoother(c) for c in configs]
    rng = np.random.default_rng(3)
    switches = 0
    for step in range(60):
        probs = rng.dirichlet(np.full(6, 0.3), size=3).astype(np.float32)
        if step == 30:
            batched[1].reset()
            alone[1].reset()
        got = update_many(batched, probs)
        want = [s.update(p) for s, p in zip(alone, probs)]
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert (g.label_index, g.score, g.uncertain, g.raw_index, g.raw_score) == \
                   (w.label_index, w.score, w.uncertain, w.raw_index, w.raw_score)
            assert np.array_equal(g.scores, w.scores)
            assert not g.scores.flags.writeable  # a view of the smoother's state, read-only
        switches += sum(g.label_index != g.raw_index for g in got)
    assert switches > 10  # smoothing did hold labels back: the comparison covers hysteresis


def test_batch_update_checks_the_shape():
    from streamrec.live.smoothing import update_many

    with pytest.raises(ValueError, match=r"probs: expected \(2, K\) scores, got shape \(3, 4\)"):
        update_many([LabelSmoother(), LabelSmoother()], np.zeros((3, 4)))
