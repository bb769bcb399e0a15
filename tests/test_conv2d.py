"""Factorized 3-D convolutions as 2-D ones: exact equivalence on CPU (the speed is on GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.video import r2plus1d_18, r3d_18, s3d

from streamrec.models.exported import torchscript_quiet
from streamrec.runtime.graphs import SpatialConv, TemporalConv, channels_last, factorize


def with_random_norms(net: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, so that folding them is really tested."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("ctor, size, swapped", [(r2plus1d_18, 112, 34), (s3d, 224, 40)])
def test_factorized_model_computes_the_same_logits(ctor, size, swapped):
    torch.manual_seed(0)
    net = with_random_norms(ctor())
    flat = factorize(net)
    assert sum(isinstance(m, (SpatialConv, TemporalConv)) for m in flat.modules()) == swapped
    assert not any(isinstance(m, nn.BatchNorm3d) for m in flat.modules())  # all folded
    x = torch.randn(2, 3, 16, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torchscript_quiet():  # TorchScript on purpose (the CUDA path); torch 2.14 deprecates it
        ref = net(x)
        out = flat(x)
        out_cl = channels_last(flat)(x.contiguous(memory_format=torch.channels_last_3d))
        traced = torch.jit.freeze(torch.jit.trace(flat, x[:1], check_trace=False))(x[:1])
    assert (out - ref).abs().max() < 1e-4
    assert (out_cl - ref).abs().max() < 1e-4
    assert (traced - ref[:1]).abs().max() < 1e-4
    assert not torch.equal(ref[0], ref[1])  # two different windows, two different answers


def test_models_without_factorized_convolutions_are_left_alone():
    assert factorize(r3d_18()) is None  # full 3x3x3 convolutions


def test_spatial_and_temporal_conv_reject_other_shapes():
    with pytest.raises(ValueError, match="expected kernel \\(1, kh, kw\\)"):
        SpatialConv(nn.Conv3d(3, 4, (3, 3, 3)))
    with pytest.raises(ValueError, match="expected kernel \\(kt, 1, 1\\)"):
        TemporalConv(nn.Conv3d(3, 4, (3, 1, 1), stride=(1, 2, 2)))
    conv = nn.Conv3d(3, 4, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    x = torch.randn(2, 3, 5, 9, 9)
    with torch.no_grad():
        assert torch.allclose(SpatialConv(conv)(x), conv(x), atol=1e-6)
    conv = nn.Conv3d(3, 4, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
    with torch.no_grad():
        assert torch.allclose(TemporalConv(conv)(x), conv(x), atol=1e-6)


@pytest.mark.slow
def test_channel_padding_is_exact_and_reaches_multiples_of_8():
    from streamrec.runtime.graphs import fold_norms, pad_channels

    torch.manual_seed(0)
    net = with_random_norms(r2plus1d_18())
    gm = fold_norms(net)
    assert pad_channels(gm, 8) == 7  # 45, 230, 230, 460, 460, 921, 921
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert {c.in_channels for c in convs} >= {48, 232, 464, 928}
    x = torch.randn(2, 3, 16, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(x)
        assert (gm(x) - ref).abs().max() < 1e-4
        flat = factorize(net, pad_to=8)
        assert (flat(x) - ref).abs().max() < 1e-4


@pytest.mark.slow
def test_conv_variants_all_compute_the_same_logits():
    from streamrec.runtime.graphs import conv_variants

    torch.manual_seed(0)
    net = with_random_norms(r2plus1d_18())
    variants = conv_variants(net)
    assert list(variants) == ["", "-pad8", "-conv2d", "-conv2d-pad8"]
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(4)).contiguous(
        memory_format=torch.channels_last_3d)
    with torch.no_grad():
        ref = net(x)
        for name, v in variants.items():
            assert (v(x) - ref).abs().max() < 1e-4, name
    assert list(conv_variants(r3d_18().eval())) == [""]  # 64/128/256/512 channels, full 3-D kernels


@pytest.mark.slow
def test_inplace_factorize_consumes_the_model_without_copying_its_weights():
    torch.manual_seed(0)
    net = with_random_norms(r2plus1d_18())
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = net(x)
    before = sum(p.numel() for p in net.parameters())
    flat = factorize(net, inplace=True)
    with torch.no_grad():
        assert (flat(x) - ref).abs().max() < 1e-4
    # every spatial/temporal conv of the new model views the storage of the consumed model's weights:
    # no second copy was made; and the consumed 3-D convolutions hold nothing any more
    swapped = [m.conv for m in flat.modules() if isinstance(m, (SpatialConv, TemporalConv))]
    assert len(swapped) == 34
    consumed = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.weight is None]
    assert len(consumed) == 34
    assert sum(p.numel() for p in flat.parameters()) < before  # batch-norm parameters folded away


@pytest.mark.slow
def test_cpu_eager_backend_runs_the_exact_rewrite_and_keeps_one_copy():
    from streamrec.runtime.classifier import Classifier
    from streamrec.models.registry import LoadedModel, model_spec

    torch.manual_seed(0)
    net = with_random_norms(r2plus1d_18())
    reference = r2plus1d_18().eval()
    reference.load_state_dict(net.state_dict())
    loaded = LoadedModel("r2plus1d_18", net, [str(i) for i in range(400)], model_spec("r2plus1d_18"), "none", meaningless=True)
    clf = Classifier(loaded, device="cpu", backend="torch", warmup=0)
    assert clf.backend == "torch" and clf.channels_last
    assert loaded.module is clf.module and isinstance(clf.module, torch.fx.GraphModule)
    g = torch.Generator().manual_seed(6)
    crops = torch.randint(0, 256, (2, 16, 112, 112, 3), dtype=torch.uint8, generator=g)  # (B, T, H, W, C)
    from streamrec.models.preprocess import normalize_batch

    with torch.no_grad():
        ref = reference(normalize_batch(crops, loaded.spec))
    assert (clf.logits(crops) - ref).abs().max() < 1e-4


@pytest.mark.slow
def test_fuse_relu_folds_every_relu_and_shortcut_add_exactly():
    from streamrec.runtime.graphs import ConvAddReLU, ConvReLU, fold_norms, fuse_relu

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(6))
    for ctor, fused, with_add in ((r2plus1d_18, 34, 8), (r3d_18, 17, 8)):
        net = with_random_norms(ctor())
        gm = fold_norms(net)
        assert fuse_relu(gm) == fused
        kinds = [type(m) for m in gm.modules()]
        assert (kinds.count(ConvReLU), kinds.count(ConvAddReLU)) == (fused - with_add, with_add)
        assert nn.ReLU not in kinds  # every ReLU went into a convolution
        with torch.no_grad():
            assert (gm(x) - net(x)).abs().max() < 1e-4


class Branchy(nn.Module):
    """ReLU as a function, a shortcut computed after the convolution, and two convolutions that must stay unfused."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.short = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a = torch.nn.functional.relu(self.a(x))  # fused: ConvReLU
        b = self.b(a)
        y = torch.relu(torch.add(self.short(a), b))  # fused: ConvAddReLU, the shortcut computed after b
        c = self.c(y)  # two users: stays a plain convolution
        s = c + y  # the sum is used twice: its ReLU cannot go into the convolution
        return torch.relu(s) + s + torch.relu(self.d(y)).mean()  # d: fused


def test_fuse_relu_keeps_the_graph_order_and_skips_shared_outputs():
    from streamrec.runtime.graphs import ConvAddReLU, ConvReLU, fuse_relu

    torch.manual_seed(0)
    net = Branchy().eval()
    gm = torch.fx.symbolic_trace(Branchy())
    gm.load_state_dict(net.state_dict())
    assert fuse_relu(gm) == 3
    assert [type(gm.get_submodule(n)).__name__ for n in ("a", "b", "c", "d")] == ["ConvReLU", "ConvAddReLU", "Conv2d",
                                                                                    "ConvReLU"]
    assert isinstance(gm.b, ConvAddReLU) and isinstance(gm.a, ConvReLU)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (gm(x) - net(x)).abs().max() < 1e-5


@pytest.mark.slow
def test_fused_variants_are_offered_on_request_and_compute_the_same_logits():
    from streamrec.runtime.graphs import conv_variants

    torch.manual_seed(0)
    net = with_random_norms(r2plus1d_18())
    variants = conv_variants(net, fused=True)
    assert list(variants) == ["", "-pad8", "-fused", "-pad8-fused", "-conv2d", "-conv2d-pad8"]
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(8)).contiguous(
        memory_format=torch.channels_last_3d)
    with torch.no_grad():
        ref = net(x)
        for name in ("-fused", "-pad8-fused"):
            assert (variants[name](x) - ref).abs().max() < 1e-4, name
    assert list(conv_variants(r3d_18().eval(), fused=True)) == ["", "-fused"]
