"""Torch modules for the four block types of a structure.

Each block type registers a builder (timm's idea: a registry, no if/else over
names). The layer arithmetic lives in `structure.cost`; these modules hold
exactly the convs, BNs, pools and projections it counts, so the analytic
parameter count equals `sum(p.numel())` (tested).

Every residual unit is `relu(body(x) + shortcut(x))`: `body` is the main path
(an `nn.Sequential` of `ConvBN`), `shortcut` an identity, a 2x2 average pool
and/or a 1x1 conv+BN projection. Keeping the main path in one `body` lets
`models.entropy` walk exactly the convs the score counts. The last conv of a
body has no ReLU; for the inverted-residual unit (K1DWK1) the ReLU after the
add is kept too, so all three types end the same way (the reference counts
that ReLU in its FLOPs as well).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..structure import K1DWK1, K1KXK1, KXKX, STEM, Block, ImageSize, as_hw


class ConvBN(nn.Sequential):
    """Bias-free KxK conv, BN, optional ReLU; padding (k-1)//2 so stride 2 gives ceil(h/2)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = True) -> None:
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]


class ResidualUnit(nn.Module):
    """`relu(body(x) + shortcut(x))`."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int, project: bool) -> nn.Module:
    """Average pool for stride 2 (ceil_mode: odd sizes match the conv's ceil(h/2);
    count_include_pad=False so ONNX Runtime divides the clipped border windows the
    same way PyTorch does), then a 1x1 conv+BN projection when asked."""
    layers: list[nn.Module] = []
    if stride == 2:
        layers.append(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))
    if project:
        layers.append(ConvBN(cin, cout, 1, relu=False))
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


UnitBuilder = Callable[[int, int, int, int, int, bool], ResidualUnit]
_UNITS: dict[str, UnitBuilder] = {}


def register_unit(kind: str) -> Callable[[UnitBuilder], UnitBuilder]:
    def add(builder: UnitBuilder) -> UnitBuilder:
        _UNITS[kind] = builder
        return builder
    return add


@register_unit(K1KXK1)
def bottleneck_unit(cin: int, cout: int, btn: int, k: int, stride: int, first: bool) -> ResidualUnit:
    """1x1 in->btn, KxK btn->btn carrying the stride, 1x1 btn->out; unit 0 always projects."""
    body = nn.Sequential(ConvBN(cin, btn, 1), ConvBN(btn, btn, k, stride), ConvBN(btn, cout, 1, relu=False))
    return ResidualUnit(body, _shortcut(cin, cout, stride, project=first))


@register_unit(KXKX)
def basic_unit(cin: int, cout: int, btn: int, k: int, stride: int, first: bool) -> ResidualUnit:
    """KxK in->btn at stride 1, KxK btn->out carrying the stride."""
    body = nn.Sequential(ConvBN(cin, btn, k), ConvBN(btn, cout, k, stride, relu=False))
    return ResidualUnit(body, _shortcut(cin, cout, stride, project=cin != cout))


@register_unit(K1DWK1)
def inverted_unit(cin: int, cout: int, btn: int, k: int, stride: int, first: bool) -> ResidualUnit:
    """1x1 expand in->btn, KxK depthwise carrying the stride, linear 1x1 project btn->out."""
    body = nn.Sequential(ConvBN(cin, btn, 1), ConvBN(btn, btn, k, stride, groups=btn),
                         ConvBN(btn, cout, 1, relu=False))
    return ResidualUnit(body, _shortcut(cin, cout, stride, project=cin != cout))


def build_block(block: Block) -> nn.Module:
    """The stem is one ConvBN; a super block is L units, unit 0 maps in->out with the stride."""
    if block.kind == STEM:
        return ConvBN(block.cin, block.cout, block.kernel, block.stride)
    unit = _UNITS[block.kind]
    units = [unit(block.cin, block.cout, block.btn, block.kernel, block.stride, True)]
    units += [unit(block.cout, block.cout, block.btn, block.kernel, 1, False) for _ in range(block.depth - 1)]
    return nn.Sequential(*units)


RESIDUAL_GAMMA = 0.2


def init_weights(module: nn.Module) -> None:
    """Kaiming (fan-out, ReLU) convs, BN weight 1 and bias 0, except the last BN of
    every residual branch, which starts at RESIDUAL_GAMMA.

    The small last gamma is the usual "start residual units near identity" trick
    (zero in Goyal et al.), but not zero: zero weights would make INT8 scales
    degenerate. It also keeps random-weight nets well conditioned: with gamma 1 a
    deep random net amplifies rounding noise (fp32 vs fp64 boxes of maedet-l at
    640 differ by 0.27 px; at 0.2 by 0.001 px), so ONNX Runtime, TensorRT and INT8
    comparisons on untrained models would measure chaos, not the export.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ResidualUnit):
            nn.init.constant_(m.body[-1][1].weight, RESIDUAL_GAMMA)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, in_channels: int = 3, image_size: ImageSize = 256,
                        seed: int = 0) -> nn.Module:
    """Set every BN's running statistics from one standard-Gaussian batch (two images, so a
    1x1 feature map at a small input size still has a variance), then eval().

    Untrained BN (mean 0, var 1) is the identity in eval mode, so activations of a
    random-weight net roughly double per residual unit and the outputs saturate:
    such a model is useless for comparing ONNX Runtime, TensorRT or INT8 against
    PyTorch. With measured statistics it has a trained net's activation scale.
    """
    height, width = as_hw(image_size)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model(torch.randn(2, in_channels, height, width, generator=torch.Generator().manual_seed(seed)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ConvBN's (eval-mode) BN into its conv, in place: the deploy form.

    The TorchScript ONNX exporter does the same fold itself, but its pass takes
    ~0.8 s on a ResNet-50; done here it takes milliseconds, which matters when
    latency search exports one candidate after another."""
    for module in model.modules():
        if isinstance(module, ConvBN) and isinstance(module[1], nn.BatchNorm2d):
            conv, norm = module[0], module[1]
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(norm.bias - norm.running_mean * scale)
            module[1] = nn.Identity()
    return model
