"""Exact rewrites of video CNNs that run faster: the same arithmetic, better kernels.

All three start from a ``torch.fx`` graph with the batch norms folded into the convolutions
(:func:`fold_norms`):

- :func:`factorize`: R(2+1)D's and S3D's spatial ``(1, kh, kw)`` and temporal ``(kt, 1, 1)``
  3-D convolutions as 2-D ones (a ``Conv2d`` over ``N * T`` frames; a ``Conv2d`` with kernel
  ``(kt, 1)`` over a ``(T, H * W)`` plane). In ``channels_last_3d`` memory both reshapes are
  free views. oneDNN runs these faster on CPU (docs/performance.md); on an H100 cuDNN's 2-D
  kernels gained nothing.
- :func:`pad_channels`: R(2+1)D's odd channel counts padded with zero filters to multiples
  of 8, the tensor cores' unit (GPU).
- :func:`fuse_relu`: each convolution with its ReLU, and a residual block's last one with
  its shortcut add, as one cuDNN call (GPU): one kernel instead of two or three; with
  :func:`pad_channels`, the fastest on an H100 (docs/performance.md).

Example:
    >>> import torch
    >>> from torchvision.models.video import r2plus1d_18
    >>> net = r2plus1d_18().eval()
    >>> fast = factorize(net)
    >>> x = torch.randn(1, 3, 8, 64, 64)
    >>> bool((fast(x) - net(x)).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import copy
import logging
import operator

import torch
from torch import nn

from streamrec.runtime.tracing import guard

logger = logging.getLogger(__name__)


class SpatialConv(nn.Module):
    """A ``Conv3d`` with kernel ``(1, kh, kw)`` and temporal stride 1, as a ``Conv2d`` per frame."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if conv.kernel_size[0] != 1 or conv.stride[0] != 1 or conv.padding[0] != 0:
            raise ValueError(f"conv: expected kernel (1, kh, kw), temporal stride 1, no temporal padding, got {conv}")
        with torch.device("meta"):  # shapes only: the weights are conv's own, not copies
            self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[1:], stride=conv.stride[1:],
                                  padding=conv.padding[1:], dilation=conv.dilation[1:], groups=conv.groups,
                                  bias=conv.bias is not None)
        _take(self.conv, conv.weight[:, :, 0], conv.bias)  # (O, I, 1, kh, kw) -> (O, I, kh, kw), a view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        y = self.conv(x.transpose(1, 2).reshape(n * t, c, h, w))  # (N, C, T, H, W) -> (N*T, C, H, W)
        return y.reshape(n, t, *y.shape[1:]).transpose(1, 2)  # (N*T, C', H', W') -> (N, C', T, H', W')


class TemporalConv(nn.Module):
    """A ``Conv3d`` with kernel ``(kt, 1, 1)`` and spatial stride 1, as a ``Conv2d`` over ``(T, H*W)``."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        if k[1:] != (1, 1) or s[1:] != (1, 1) or p[1:] != (0, 0):
            raise ValueError(f"conv: expected kernel (kt, 1, 1), spatial stride 1, no spatial padding, got {conv}")
        with torch.device("meta"):
            self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, (k[0], 1), stride=(s[0], 1), padding=(p[0], 0),
                                  dilation=(conv.dilation[0], 1), groups=conv.groups, bias=conv.bias is not None)
        _take(self.conv, conv.weight[..., 0], conv.bias)  # (O, I, kt, 1, 1) -> (O, I, kt, 1), a view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        y = self.conv(x.reshape(n, c, t, h * w))  # (N, C, T, H, W) -> (N, C, T, H*W)
        return y.reshape(n, y.shape[1], y.shape[2], h, w)  # (N, C', T', H*W) -> (N, C', T', H, W)


def _take(conv2d: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    conv2d.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
    if bias is not None:
        conv2d.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)


def _replacement(conv: nn.Conv3d) -> nn.Module | None:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if conv.padding_mode != "zeros" or isinstance(p, str):
        return None
    if k[0] == 1 and s[0] == 1 and p[0] == 0 and k[1:] != (1, 1):
        return SpatialConv(conv)
    if k[1:] == (1, 1) and s[1:] == (1, 1) and p[1:] == (0, 0) and k[0] > 1:
        return TemporalConv(conv)
    return None


def channels_last(module: nn.Module) -> nn.Module:
    """Lay out every 5-D weight ``channels_last_3d`` and every 4-D one ``channels_last`` (in place)."""
    for p in module.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        elif p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return module


_CONV_FORWARDS = (nn.Conv2d.forward, nn.Conv3d.forward)


class _ConvLeafTracer(torch.fx.Tracer):
    """``torch.fx``'s tracer, keeping subclasses of ``Conv2d``/``Conv3d`` that do not change
    ``forward`` (torchvision's ``Conv3DSimple`` & co.) as modules instead of tracing into them."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).forward in _CONV_FORWARDS or super().is_leaf_module(m, module_qualified_name)


def fold_norms(module: nn.Module, *, inplace: bool = False) -> torch.fx.GraphModule | None:
    """``module`` (eval, float32) as a ``torch.fx`` graph with batch norms folded into the
    convolutions before them; None when the model cannot be traced by ``torch.fx``.

    ``inplace=False`` folds a deep copy. ``inplace=True`` consumes ``module``: its convolutions
    take the folded weights one by one (the old ones are freed as it goes, so the peak is one
    set of weights plus one layer's), and ``module`` itself must not be run afterwards.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    try:
        root = module if inplace else copy.deepcopy(module)
        with guard.trace():  # no model may run in another thread while fx patches nn.Module
            graph = _ConvLeafTracer().trace(root)
        gm = torch.fx.GraphModule(root, graph, type(root).__name__)
    except Exception as exc:  # noqa: BLE001 - not fx-traceable: keep the model as it is
        logger.info("cannot fold batch norms of %s (%s)", type(module).__name__, exc)
        return None
    gm = gm.eval().float()
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or len(node.args) != 1:
            continue
        prev = node.args[0]
        conv = modules.get(prev.target) if isinstance(prev, torch.fx.Node) and prev.op == "call_module" else None
        if (not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or len(prev.users) != 1
                or calls[prev.target] != 1 or calls[node.target] != 1):
            continue
        with torch.no_grad():
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, attr, new)


def pad_channels(gm: torch.fx.GraphModule, multiple: int = 8) -> int:
    """Pad the channels between two convolutions to a multiple of ``multiple`` (in place); returns how many.

    R(2+1)D sizes its middle channels to match a full 3-D convolution's parameter count: 45,
    230, 460, 921. Tensor cores want multiples of 8. For a ``conv A -> ReLU -> conv B`` chain
    (norms folded), A gets extra filters of zero weight and zero bias, whose outputs are 0,
    ReLU keeps them 0, and B gets zero weights for them: the same result, exactly.
    """
    padded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(a := gm.get_submodule(node.target), nn.Conv3d):
            continue
        extra = (-a.out_channels) % multiple
        if extra == 0 or a.groups != 1 or len(node.users) != 1:
            continue
        act = next(iter(node.users))
        if act.op != "call_module" or not isinstance(gm.get_submodule(act.target), nn.ReLU) or len(act.users) != 1:
            continue
        nxt = next(iter(act.users))
        if nxt.op != "call_module" or not isinstance(b := gm.get_submodule(nxt.target), nn.Conv3d) or b.groups != 1:
            continue
        new_a = nn.Conv3d(a.in_channels, a.out_channels + extra, a.kernel_size, a.stride, a.padding, a.dilation, bias=True)
        new_b = nn.Conv3d(b.in_channels + extra, b.out_channels, b.kernel_size, b.stride, b.padding, b.dilation,
                          bias=b.bias is not None)
        with torch.no_grad():
            new_a.weight.zero_()
            new_a.weight[: a.out_channels] = a.weight  # (O + extra, I, kt, kh, kw): extra filters are zero
            new_a.bias.zero_()
            if a.bias is not None:
                new_a.bias[: a.out_channels] = a.bias
            new_b.weight.zero_()
            new_b.weight[:, : b.in_channels] = b.weight  # (O, I + extra, ...): extra inputs weigh nothing
            if b.bias is not None:
                new_b.bias.copy_(b.bias)
        _set(gm, node.target, new_a.to(a.weight.device))
        _set(gm, nxt.target, new_b.to(b.weight.device))
        padded += 1
    return padded


def factorize(module: nn.Module, *, pad_to: int = 1, inplace: bool = False) -> nn.Module | None:
    """An equivalent copy of ``module`` (eval mode, same device and dtype) with its factorized 3-D
    convolutions as 2-D ones, batch norms folded, and (``pad_to`` > 1) the channels between two
    convolutions padded to a multiple of ``pad_to``; None when it has no factorized convolution
    or cannot be traced by ``torch.fx``. ``inplace=True`` consumes ``module`` instead of copying
    it (see :func:`fold_norms`): no second set of weights."""
    if not any(isinstance(m, nn.Conv3d) and _replacement(m) is not None for m in module.modules()):
        return None
    param = next(module.parameters())  # the device and dtype to return in (folding works in float32)
    fused = fold_norms(module, inplace=inplace)
    if fused is None:
        return None
    padded = pad_channels(fused, pad_to) if pad_to > 1 else 0
    swapped = 0
    for name, sub in list(fused.named_modules()):
        if isinstance(sub, nn.Conv3d):
            new = _replacement(sub)
            if new is not None:
                _set(fused, name, new)
                if inplace:  # the consumed model must not keep the storage the new module views
                    sub.weight, sub.bias = None, None
                swapped += 1
    logger.info("%d factorized 3-D convolutions run as 2-D ones; %d channel counts padded", swapped, padded)
    return fused.to(param.device, param.dtype).eval()


class ConvReLU(nn.Module):
    """``relu(conv(x))``, bias included, as one cuDNN call on CUDA: the bias add and the ReLU run in
    the convolution's epilogue instead of as two more passes over its output (in R(2+1)D at batch
    32 those passes took more GPU time than the convolutions). On CPU, or for a shape cuDNN has
    no fused kernel for, the convolution then the ReLU."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv
        self.fused = True  # False once cuDNN has refused this call site

    def _refused(self, exc: RuntimeError) -> None:
        self.fused = False
        logger.info("cuDNN has no fused kernel for %s (%s); running it unfused", self.conv,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if x.is_cuda and self.fused:
            try:
                return torch.cudnn_convolution_relu(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
            except RuntimeError as exc:
                self._refused(exc)
        return torch.relu(c(x))


class ConvAddReLU(ConvReLU):
    """``relu(conv(x) + z)``: a residual block's last convolution, its shortcut and the ReLU after
    the sum, as one cuDNN call on CUDA (see :class:`ConvReLU`)."""

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        c = self.conv
        if x.is_cuda and self.fused:
            try:
                return torch.cudnn_convolution_add_relu(x, c.weight, z, 1.0, c.bias, c.stride, c.padding, c.dilation,
                                                        c.groups)
            except RuntimeError as exc:
                self._refused(exc)
        return torch.relu(c(x) + z)


def _is_relu(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (torch.relu, torch.nn.functional.relu) and len(node.args) == 1
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def fuse_relu(gm: torch.fx.GraphModule) -> int:
    """Replace ``conv -> ReLU`` with :class:`ConvReLU` and ``conv -> + shortcut -> ReLU`` with
    :class:`ConvAddReLU` (in place; norms folded first, see :func:`fold_norms`); returns how many.

    Example:
        >>> from torchvision.models.video import r2plus1d_18
        >>> net = r2plus1d_18().eval()
        >>> gm = fold_norms(net)
        >>> fuse_relu(gm)  # 2 in the stem, 4 in each of the 8 residual blocks (the last one with the shortcut)
        34
        >>> x = torch.randn(1, 3, 8, 64, 64)
        >>> bool((gm(x) - net(x)).abs().max() < 1e-4)
        True
    """
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.users) != 1 or len(node.args) != 1 or node.kwargs:
            continue
        conv = gm.get_submodule(node.target)
        if type(conv).forward not in _CONV_FORWARDS or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue  # (torchvision's Conv3DSimple & co. are plain Conv3d subclasses: they qualify)
        user = next(iter(node.users))
        if _is_relu(gm, user):
            relu, new, args = user, ConvReLU(conv), node.args
        elif (user.op == "call_function" and user.target in (operator.add, operator.iadd, torch.add)
              and len(user.args) == 2 and not user.kwargs and len(user.users) == 1
              and _is_relu(gm, next(iter(user.users)))):
            z = user.args[1] if user.args[0] is node else user.args[0]
            if z is node or not isinstance(z, torch.fx.Node):
                continue
            relu, new, args = next(iter(user.users)), ConvAddReLU(conv), (node.args[0], z)
        else:
            continue
        _set(gm, node.target, new)
        with gm.graph.inserting_before(relu):  # where the ReLU was: the shortcut may be computed after the conv
            call = gm.graph.call_module(node.target, args)
        relu.replace_all_uses_with(call)
        for dead in (relu, user, node) if user is not relu else (relu, node):
            gm.graph.erase_node(dead)
        fused += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # the ReLU modules
    gm.recompile()
    return fused


def conv_variants(net: torch.nn.Module, *, fused: bool | None = None) -> dict[str, torch.nn.Module]:
    """The model as is, and (where they apply) with channels padded to multiples of 8 (``-pad8``),
    factorized convolutions as 2-D ones (``-conv2d``), and both; same device and dtype, channels-last.
    ``fused`` (default: when ``net`` is on CUDA) adds the model with each convolution's bias, ReLU
    and residual add fused into one cuDNN call (``-fused``, :func:`fuse_relu`), padded too where
    padding applies (``-pad8-fused``)."""
    p = next(net.parameters())
    out = {"": net}
    gm = fold_norms(net)
    if gm is not None and pad_channels(gm, 8):
        out["-pad8"] = channels_last(gm.to(p.device, p.dtype).eval())
    if fused if fused is not None else p.device.type == "cuda":
        for suffix in ("", "-pad8") if "-pad8" in out else ("",):
            gm = fold_norms(net)
            if gm is not None and (not suffix or pad_channels(gm, 8)) and fuse_relu(gm):
                out[f"{suffix}-fused"] = channels_last(gm.to(p.device, p.dtype).eval())
    flat = factorize(net)
    if flat is not None:
        out["-conv2d"] = channels_last(flat)
        if "-pad8" in out:
            out["-conv2d-pad8"] = channels_last(factorize(net, pad_to=8))
    return out
