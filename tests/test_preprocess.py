import av
import numpy as np
import pytest
import torch
from torchvision.models import get_model_weights

from streamrec.models import TORCHVISION_MODELS, model_spec
from streamrec.preprocess import FramePreprocessor, center_crop_box, resized_size

from conftest import all_clips


def decode(path, n=16):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))]


@pytest.mark.parametrize("clip", all_clips() or ["missing"])
@pytest.mark.parametrize("model", ["r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t"])
def test_matches_torchvision_weights_transforms_on_real_clips(clips, clip, model):
    frames = decode(clips / clip)
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
