"""A model's class names are labels people read, rules name and the page draws: a checkpoint or an
exported file whose names cannot be told apart (from each other, or from the ``uncertain`` of no
clear answer), or that hold invisible or endless text, is refused at load with one line."""

from __future__ import annotations

import pytest

from streamrec.errors import WeightsError
from streamrec.models.registry import build_model, load_checkpoint, make_checkpoint, model_spec, load_model


def checkpoint(classes: list[str]) -> dict:
    return make_checkpoint(build_model("tiny3d", num_classes=len(classes)), model="tiny3d", classes=classes,
                           spec=model_spec("tiny3d"))


@pytest.mark.parametrize("classes, why", [
    (["a", "uncertain"], "expected names other than 'uncertain' (the label shown when no class is clear), got 'uncertain'"),
    (["a", " Uncertain "], "expected names other than 'uncertain' (the label shown when no class is clear), got ' Uncertain '"),
    (["a", "b", "a"], "expected distinct names, got 'a' more than once"),
    (["squat", "squat "], "expected distinct names, got 'squat ' and 'squat', which read as one"),
    (["caf\u00e9", "cafe\u0301"], "expected distinct names, got " + repr("cafe\u0301") + " and " + repr("caf\u00e9")
     + ", which read as one"),  # a composed and a decomposed accent
    (["a", "b\u200bc"], "expected names of 1-200 characters without control characters or line breaks, got 'b\\u200bc'"),
    (["a", "x" * 201], "expected names of 1-200 characters without control characters or line breaks, got " + repr("x" * 40)),
])
def test_class_names_that_cannot_be_told_apart_are_refused(classes, why):
    with pytest.raises(WeightsError) as info:
        load_checkpoint(checkpoint(classes), source="ck.pt")
    assert str(info.value) == f"--weights ck.pt: classes: {why}"


def test_fit_names_load_as_written():
    loaded = load_checkpoint(checkpoint(["back squat", "deadlift", "x" * 200, "uncertainty"]), source="ck.pt")
    assert loaded.classes == ["back squat", "deadlift", "x" * 200, "uncertainty"]


def test_an_exported_file_with_duplicate_names_is_refused(tmp_path):
    """A TorchScript file written as ``streamrec export`` writes one, its metadata edited."""
    import json

    import torch

    from streamrec.models.exported import EXPORT_META

    loaded = load_checkpoint(checkpoint(["a", "b", "c"]), source="ok.pt")
    meta = json.dumps({"model": "tiny3d", "classes": ["a", "b", "a"], "preprocess": loaded.spec.to_dict()})
    out = tmp_path / "dup.ts"
    traced = torch.jit.trace(loaded.module.eval(), torch.zeros(1, 3, 16, 112, 112), check_trace=False)
    torch.jit.save(traced, str(out), _extra_files={EXPORT_META: meta})
    with pytest.raises(WeightsError) as info:
        load_model(None, weights=str(out))
    assert str(info.value) == f"--weights {out}: classes: expected distinct names, got 'a' more than once"
