import os

import pytest
import torch

from streamrec.errors import WeightsError
from streamrec.models.registry import (
    build_model, hub_checkpoint_path, kinetics_classes, load_model, make_checkpoint, model_spec,
)
from torchvision.models import get_model_weights


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("STREAMREC_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.slow
def test_default_weights_load_from_the_hub_cache(hub):
    torch.manual_seed(0)
    reference = build_model("s3d", num_classes=400)
    path = hub_checkpoint_path("s3d")
    assert path.parent == hub
    assert path.name == os.path.basename(get_model_weights("s3d").DEFAULT.url)
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    loaded = load_model("s3d", weights="DEFAULT")
    assert not loaded.meaningless and loaded.weights == "DEFAULT"
    assert loaded.classes == list(get_model_weights("s3d").DEFAULT.meta["categories"])
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[k], v), k


def test_default_weights_offline_error_names_file_folder_and_fix(hub):
    with pytest.raises(WeightsError) as err:
        load_model("s3d", weights="DEFAULT")
    msg = str(err.value)
    name = os.path.basename(get_model_weights("s3d").DEFAULT.url)
    assert name in msg and str(hub) in msg and "copy it to" in msg
    assert "\n" not in msg


def test_none_is_random_and_flagged():
    loaded = load_model("r3d_18", weights="none")
    assert loaded.meaningless and len(loaded.classes) == 400


def test_state_dict_file_for_another_model_is_refused(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save(build_model("tiny3d", num_classes=400).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit model r2plus1d_18"):
        load_model("r2plus1d_18", weights=str(path))


def test_checkpoint_carries_classes_and_preprocessing(tmp_path):
    torch.manual_seed(1)
    m = build_model("tiny3d", num_classes=3)
    spec = model_spec("tiny3d")
    path = tmp_path / "ck.pt"
    torch.save(make_checkpoint(m, model="tiny3d", classes=["serve", "smash", "lob"], spec=spec), path)
    loaded = load_model(None, weights=str(path))
    assert loaded.name == "tiny3d" and loaded.classes == ["serve", "smash", "lob"] and loaded.spec == spec
    with pytest.raises(WeightsError, match="checkpoint is for model 'tiny3d', but --model is 's3d'"):
        load_model("s3d", weights=str(path))


def test_checkpoint_with_wrong_class_count_is_refused(tmp_path):
    ck = make_checkpoint(build_model("tiny3d", num_classes=3), model="tiny3d", classes=["a", "b"], spec=model_spec("tiny3d"))
    path = tmp_path / "bad.pt"
    torch.save(ck, path)
    with pytest.raises(WeightsError, match=r"fc.weight expected \(2, 256\), got \(3, 256\)"):
        load_model(None, weights=str(path))


def test_unknown_model_and_missing_file():
    with pytest.raises(WeightsError, match="--model: expected one of"):
        load_model("resnet50", weights="none")
    with pytest.raises(WeightsError, match="no such file"):
        load_model("r3d_18", weights="/nonexistent/w.pth")


def test_not_a_torch_file(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as err:
        load_model("r3d_18", weights=str(p))
    assert str(err.value) == (f"--weights: {p} is not a file torch.save wrote "
                              "(expected a state_dict, a streamrec checkpoint, TorchScript or ONNX)")


def test_a_pickled_model_or_a_cut_file_says_what_it_is_in_one_line(tmp_path):
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    model = build_model("tiny3d", num_classes=400)
    torch.save(model, whole)  # the whole module, pickled: refused, never unpickled
    torch.save(model.state_dict(), cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(WeightsError) as err:
        load_model("tiny3d", weights=str(whole))
    assert str(err.value) == (f"--weights: {whole} holds a whole pickled model (streamrec.models.tiny3d.Tiny3D), which "
                              "streamrec does not unpickle (unpickling can run any code); save its weights "
                              f'instead: torch.save(model.state_dict(), "{whole}")')
    with pytest.raises(WeightsError) as err:
        load_model("tiny3d", weights=str(cut))
    assert str(err.value) == (f"--weights: {cut} is damaged or incomplete (PytorchStreamReader failed reading zip "
                              "archive: failed finding central directory); copy or download it again")


def test_class_names_come_from_weights_meta():
    assert kinetics_classes("mvit_v2_s") == list(get_model_weights("mvit_v2_s").DEFAULT.meta["categories"])


def test_tiny3d_is_under_one_million_parameters():
    assert sum(p.numel() for p in build_model("tiny3d", num_classes=400).parameters()) < 1_000_000


@pytest.mark.slow
def test_loading_takes_the_loaded_tensors_instead_of_copying_them():
    from streamrec.models.registry import build_loaded

    torch.manual_seed(0)
    state = build_model("r2plus1d_18", num_classes=400).state_dict()
    module = build_loaded("r2plus1d_18", state, num_classes=400, source="test")
    got = module.state_dict()
    assert got.keys() == state.keys()
    assert all(got[k].data_ptr() == v.data_ptr() for k, v in state.items())  # the same memory: one copy
    assert not any(p.is_meta for p in module.parameters())
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    module = build_loaded("r2plus1d_18", half, num_classes=400, source="test")
    assert {p.dtype for p in module.parameters()} == {torch.float32}  # cast, as load_state_dict would
    with pytest.raises(WeightsError, match=r"--weights test: does not fit model r2plus1d_18: 2 shape mismatches"):
        build_loaded("r2plus1d_18", state, num_classes=10, source="test")
