import av
import numpy as np
import pytest
import torch
from torchvision.models import get_model_weights

from streamrec.models.registry import TORCHVISION_MODELS, model_spec
from streamrec.models.preprocess import FramePreprocessor, center_crop_box, resized_size

from conftest import format_clips


def decode(path, n=16):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))]


@pytest.mark.parametrize("clip", format_clips())
@pytest.mark.parametrize("model", ["r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t"])
@pytest.mark.slow
def test_matches_torchvision_weights_transforms_on_real_clips(clip, model):
    frames = decode(clip)
    assert len(frames) == 16
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)
    ref = get_model_weights(model).DEFAULT.transforms()(x)  # (C, T, H, W)
    ours = FramePreprocessor(model_spec(model)).clip(frames)[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 0.04


@pytest.mark.parametrize("model", TORCHVISION_MODELS)
def test_spec_comes_from_the_weights_preset(model):
    t = get_model_weights(model).DEFAULT.transforms()
    spec = model_spec(model)
    assert spec.crop == tuple(t.crop_size)
    assert spec.resize == tuple(t.resize_size)
    assert spec.mean == tuple(t.mean) and spec.std == tuple(t.std)


def test_temporal_sampling_per_family():
    assert (model_spec("r2plus1d_18").frames, model_spec("r2plus1d_18").fps) == (16, 15.0)
    assert (model_spec("mvit_v1_b").frames, model_spec("mvit_v1_b").fps) == (16, 7.5)
    assert model_spec("mvit_v2_s").span_s == 2.0


def test_resized_size_short_side_and_exact():
    assert resized_size(1080, 1920, (256,)) == (256, 455)
    assert resized_size(1920, 1080, (256,)) == (455, 256)
    assert resized_size(240, 320, (128, 171)) == (128, 171)
    assert center_crop_box(128, 171, (112, 112)) == (8, 30)


def test_rejects_wrong_frame_layout():
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    with pytest.raises(ValueError, match=r"expected uint8 \(H, W, 3\)"):
        pre(np.zeros((3, 240, 320), np.uint8))


@pytest.mark.parametrize("frames, error, message", [
    ([], ValueError, "frames: expected at least one frame, got none"),
    (np.zeros((16, 64, 64), np.uint8), ValueError, "got an array of shape (16, 64, 64)"),
    (np.zeros((1, 16, 64, 64, 3), np.uint8), ValueError, "got an array of shape (1, 16, 64, 64, 3)"),
    ("clip.mp4", TypeError, "frames: expected RGB uint8 frames (T x H x W x 3, or a list of H x W x 3), got str"),
    (None, TypeError, "got NoneType"),
    ([[0, 0, 0]], TypeError, "frame: expected a uint8 (H, W, 3) NumPy array, got list"),
    ([np.zeros((64, 64, 3), np.float32)], ValueError, "frame: expected uint8 (H, W, 3), got float32 (64, 64, 3)"),
])
def test_a_clip_of_the_wrong_kind_is_refused_with_what_was_given(frames, error, message):
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    with pytest.raises(error) as info:
        pre.clip(frames)
    assert message in str(info.value)


def test_a_clip_can_be_any_iterable_of_frames():
    pre = FramePreprocessor(model_spec("r2plus1d_18"))
    frames = [np.full((120, 160, 3), i * 10, np.uint8) for i in range(4)]
    assert torch.equal(pre.clip(iter(frames)), pre.clip(frames))
    assert torch.equal(pre.clip(np.stack(frames)), pre.clip(frames))
    assert tuple(pre.clip(frames).shape) == (1, 3, 4, 112, 112)


@pytest.mark.slow
def test_batch_normalization_equals_per_frame_normalization():
    """The ring keeps uint8 crops; normalizing a batch of windows gives what normalizing each frame gives."""
    from streamrec.runtime.classifier import Classifier
    from streamrec.models.registry import load_model
    from streamrec.models.preprocess import batch_windows, normalize_batch

    spec = model_spec("r2plus1d_18")
    pre = FramePreprocessor(spec)
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8) for _ in range(3)]
    batch = normalize_batch(batch_windows(windows), spec)
    assert batch.shape == (3, 3, 16, 112, 112) and batch.dtype == torch.float32 and batch.is_contiguous()
    for b, w in enumerate(windows):
        per_frame = np.stack([pre.normalize(f) for f in w], axis=1)  # (C, T, H, W)
        assert np.array_equal(batch[b].numpy(), per_frame)  # one set of per-channel constants (affine)
        assert torch.equal(pre.window(w)[0], batch[b])
    half = normalize_batch(batch_windows(windows), spec, dtype=torch.float16, channels_last=True)
    assert half.dtype == torch.float16 and half.is_contiguous(memory_format=torch.channels_last_3d)
    assert (half.float() - batch).abs().max() < 2e-3
    with pytest.raises(ValueError, match=r"crops: expected uint8 \(B, T, H, W, 3\), got torch.float32"):
        normalize_batch(batch, spec)

    torch.manual_seed(0)
    clf = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend="torch", warmup=0)
    crops = batch_windows([rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8) for _ in range(2)])
    from_uint8 = clf.logits(crops)
    from_float = clf.logits(normalize_batch(crops, clf.loaded.spec))
    assert from_uint8.shape == (2, 10) and torch.equal(from_uint8, from_float)
    assert not torch.equal(from_uint8[0], from_uint8[1])


def test_numpy_normalization_is_bit_identical_to_torch():
    """Runtimes with their own thread pool get their input normalized in NumPy: the very same floats."""
    from streamrec.models.preprocess import batch_windows, normalize_batch, normalize_crops

    rng = np.random.default_rng(3)
    for name in ("r2plus1d_18", "mvit_v2_s", "swin3d_t"):  # three different means and stds
        spec = model_spec(name)
        crops = rng.integers(0, 256, (2, spec.frames, *spec.crop, 3), dtype=np.uint8)
        ours = normalize_crops(crops, spec)
        assert ours.shape == (2, 3, spec.frames, *spec.crop) and ours.dtype == np.float32 and ours.flags.c_contiguous
        assert torch.equal(torch.from_numpy(ours), normalize_batch(batch_windows(list(crops)), spec)), name
    with pytest.raises(ValueError, match=r"crops: expected uint8 \(B, T, H, W, 3\), got float32 \(1, 16, 112, 112, 3\)"):
        normalize_crops(np.zeros((1, 16, 112, 112, 3), np.float32), model_spec("r2plus1d_18"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_own_pool_backends_normalize_uint8_like_float_input(backend):
    """OpenVINO and ONNX Runtime take uint8 windows through the NumPy path: same logits as from
    windows normalized by torch."""
    from streamrec.runtime.classifier import OWN_POOL, Classifier
    from streamrec.models.registry import load_model
    from streamrec.models.preprocess import batch_windows, normalize_batch

    torch.manual_seed(0)
    clf = Classifier(load_model("tiny3d", weights="none"), device="cpu", backend=backend, warmup=0)
    assert clf.backend == backend and backend in OWN_POOL
    rng = np.random.default_rng(4)
    crops = batch_windows([rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8) for _ in range(2)])
    from_uint8 = clf.logits(crops)
    assert torch.equal(from_uint8, clf.logits(normalize_batch(crops, clf.loaded.spec)))
    assert from_uint8.shape == (2, 10) and not torch.equal(from_uint8[0], from_uint8[1])


def test_a_frame_of_absurd_shape_is_cropped_without_making_its_huge_resize(monkeypatch):
    """A 16384 x 2 strip for a model resized by its short side (MViT: 256) would be resized to
    256 x 2,097,152 (1.6 GB) before its 224 x 224 crop: only the crop's pixels are sampled, at
    the points the resize would take them from."""
    import streamrec.models.preprocess as preprocess
    from streamrec.models.registry import model_spec

    pre = FramePreprocessor(model_spec("mvit_v2_s"))
    strip = np.random.default_rng(0).integers(0, 256, (2, 16384, 3), dtype=np.uint8)
    assert pre.resize_crop(strip).shape == (224, 224, 3)

    frame = np.random.default_rng(1).integers(0, 256, (240, 900, 3), dtype=np.uint8)
    exact = pre.resize_crop(frame)  # 256 x 960: resized whole, then cropped
    monkeypatch.setattr(preprocess, "RESIZED_PIXELS_MAX", 1000)
    sampled = pre.resize_crop(frame)
    assert sampled.shape == exact.shape and np.abs(sampled.astype(int) - exact.astype(int)).max() <= 1
