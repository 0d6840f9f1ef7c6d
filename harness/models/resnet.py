"""The CIFAR ResNet family of He et al. 2016, section 4.2, and its plain twin.

depth = 6n + 2: a 3x3 conv stem with 16 filters, three stages of n basic blocks
(two 3x3 convs each) at 16/32/64 filters (times `width`), downsampling by 2 at the first
block of stages 2 and 3, global average pooling and a linear classifier.

`residual=False` keeps every layer and drops the shortcut, so a plain net and a
residual net of the same depth (shortcut A) have identical parameter counts.

The lectures' other claims are arguments too: how the resolution is halved (`downsample`:
a strided conv as He et al., max or average pooling, Zhang 2019's blur pooling, or not at
all), how convolutions pad (`padding`: zeros, or circular, which with no downsampling makes
the network exactly invariant to circular shifts), and dropout before the classifier and
inside the blocks.

The family as the harness sees it: its schema (ResNetConfig, conf/model/resnet.yaml), its
rules (check) and its LABELS, the words for its axes in run names, figures and claims.
"""

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from harness import contract
from harness.config.rules import fail, fraction
from harness.config.schema import register_model

LABELS = contract.RESNET_LABELS  # analysis reads it there too, without importing the models


class Shortcut(str, Enum):
    A = "A"  # identity, zero-padded channels where the shape changes
    B = "B"  # 1x1 projection where the shape changes


class Init(str, Enum):
    kaiming = "kaiming"
    fixup = "fixup"


class Downsample(str, Enum):
    stride = "stride"  # the block's first conv has stride 2 (He et al.)
    maxpool = "maxpool"  # a 2x2 max pool after the block's first conv
    avgpool = "avgpool"  # a 2x2 average pool there
    blurpool = "blurpool"  # low-pass filter, then subsample (Zhang 2019, "antialiased CNNs")
    none = "none"  # full resolution up to the global pool (slow)


class Padding(str, Enum):
    zeros = "zeros"
    circular = "circular"


def blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2; ValueError for any other depth."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth {depth!r} is not 6n + 2 with n >= 1")
    return (depth - 2) // 6


@dataclass
class ResNetConfig:
    _target_: str = "harness.models.resnet.CifarResNet"
    depth: int = 20  # 6n + 2
    residual: bool = True
    batchnorm: bool = True
    width: float = 1.0
    shortcut: Shortcut = Shortcut.A
    init: Init = Init.kaiming
    downsample: Downsample = Downsample.stride
    padding: Padding = Padding.zeros
    dropout: float = 0.0  # before the classifier
    block_dropout: float = 0.0  # after each block's first ReLU


register_model("resnet", ResNetConfig)

MAX_DEPTH = 1202
MAX_WIDTH = 64  # 1,024 filters in the first stage, 4,096 in the last: far wider than any CIFAR study


def check(m) -> None:
    """What the types of ResNetConfig cannot say (harness.config.rules.validate calls it)."""
    try:
        blocks_per_stage(m.depth)
    except ValueError:
        fail(m, "depth", "is not a CIFAR ResNet depth: use 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    if m.depth > MAX_DEPTH:
        fail(m, "depth", f"is deeper than {MAX_DEPTH}, the deepest CIFAR ResNet of He et al. (2016)")
    if not (0 < m.width <= MAX_WIDTH) or round(16 * m.width) < 1:
        fail(m, "width", f"must be a positive number with at least 1 filter in the first stage (width >= 0.04) "
                         f"and at most {16 * MAX_WIDTH:,} (width <= {MAX_WIDTH})")
    if m.init == Init.fixup and not m.residual:
        fail(m, "init", "needs model.residual=true (Fixup zero-initialises residual branches)")
    for key in ("dropout", "block_dropout"):
        fraction(m, key)


class EverySecondPixel(nn.Module):
    """What a stride-2 1x1 convolution or shortcut samples."""

    def forward(self, x):
        return x[:, :, ::2, ::2]


class BlurPool(nn.Module):
    """Zhang 2019: a [1, 2, 1] x [1, 2, 1] / 16 low-pass filter, then every second pixel."""

    def __init__(self, channels: int, padding: Padding):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (torch.outer(taps, taps) / 16).expand(channels, 1, 3, 3).clone()
        self.register_buffer("kernel", kernel, persistent=False)  # fixed, not learned
        self.mode = "circular" if padding == Padding.circular else "constant"

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=self.mode), self.kernel.to(x.dtype), stride=2, groups=x.shape[1])


def halving(downsample: Downsample, channels: int, padding: Padding) -> nn.Module:
    """The module that halves the resolution after a block's first conv (or on its shortcut)."""
    return {Downsample.stride: EverySecondPixel, Downsample.maxpool: lambda: nn.MaxPool2d(2),
            Downsample.avgpool: lambda: nn.AvgPool2d(2),
            Downsample.blurpool: lambda: BlurPool(channels, padding)}[Downsample(downsample)]()


def conv3x3(in_planes: int, planes: int, stride: int, padding: Padding, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 3, stride, 1, bias=bias, padding_mode=Padding(padding).value)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample spatially (as the branch does), zero-pad the new channels. No parameters."""

    def __init__(self, in_planes: int, out_planes: int, subsample: nn.Module | None):
        super().__init__()
        self.subsample = subsample or nn.Identity()
        self.extra = out_planes - in_planes

    def forward(self, x):
        x = self.subsample(x)
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-[halve]-[dropout]-conv-BN, plus the shortcut when `residual`, then ReLU.

    `halve`: this block halves the resolution, the `downsample` way (a strided conv1, or a
    pooling after its ReLU; the shortcut subsamples alike). With fixup=True the block carries
    Fixup's scalar biases and multiplier (Zhang, Dauphin & Ma 2019, section 3), which stand
    in for BatchNorm's affine terms.
    """

    def __init__(self, in_planes, planes, halve: bool, *, residual, batchnorm, shortcut, fixup,
                 downsample=Downsample.stride, padding=Padding.zeros, dropout: float = 0.0):
        super().__init__()
        self.residual = residual
        self.fixup = fixup
        strided = halve and downsample == Downsample.stride
        self.conv1 = conv3x3(in_planes, planes, 2 if strided else 1, padding, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(planes) if batchnorm else nn.Identity()
        self.pool = halving(downsample, planes, padding) if halve and not strided else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(planes, planes, 1, padding, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(planes) if batchnorm else nn.Identity()
        self.shortcut = nn.Identity()
        if residual and (halve or in_planes != planes):
            if shortcut == Shortcut.A:
                self.shortcut = ZeroPadShortcut(in_planes, planes, halving(downsample, in_planes, padding) if halve else None)
            else:
                pool = halving(downsample, in_planes, padding) if halve and not strided else nn.Identity()
                self.shortcut = nn.Sequential(OrderedDict(
                    pool=pool, conv=nn.Conv2d(in_planes, planes, 1, 2 if strided else 1, bias=not batchnorm),
                    bn=nn.BatchNorm2d(planes) if batchnorm else nn.Identity()))
        if fixup:
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (
                nn.Parameter(torch.zeros(1)) for _ in range(4)
            )
            self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        if self.fixup:
            out = self.dropout(self.pool(F.relu(self.bn1(self.conv1(x + self.bias1a)) + self.bias1b)))
            out = self.bn2(self.conv2(out + self.bias2a)) * self.scale + self.bias2b
            return F.relu(out + self.shortcut(x + self.bias1a))
        out = self.dropout(self.pool(F.relu(self.bn1(self.conv1(x)))))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """Module paths say where a layer sits: stem.conv, stage2.block1.conv2, stage3.block1.shortcut.bn, fc."""

    def __init__(self, depth: int = 20, residual: bool = True, batchnorm: bool = True, width: float = 1.0,
                 shortcut: Shortcut = Shortcut.A, init: Init = Init.kaiming, downsample: Downsample = Downsample.stride,
                 padding: Padding = Padding.zeros, dropout: float = 0.0, block_dropout: float = 0.0,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = blocks_per_stage(depth)
        fixup = init == Init.fixup
        planes = [max(1, round(16 * width * 2**i)) for i in range(3)]

        self.stem = nn.Sequential(OrderedDict(
            conv=conv3x3(in_channels, planes[0], 1, padding, bias=not batchnorm),
            bn=nn.BatchNorm2d(planes[0]) if batchnorm else nn.Identity()))
        in_planes = planes[0]
        for stage, out_planes in enumerate(planes, 1):
            blocks = OrderedDict()
            for b in range(1, n + 1):
                halve = stage > 1 and b == 1 and downsample != Downsample.none
                blocks[f"block{b}"] = BasicBlock(in_planes, out_planes, halve, residual=residual, batchnorm=batchnorm,
                                                 shortcut=shortcut, fixup=fixup, downsample=downsample,
                                                 padding=padding, dropout=block_dropout)
                in_planes = out_planes
            self.add_module(f"stage{stage}", nn.Sequential(blocks))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(in_planes, num_classes)
        if fixup:
            self.stem_bias = nn.Parameter(torch.zeros(1))
            self.fc_bias = nn.Parameter(torch.zeros(1))
        self.fixup = fixup
        self._init_weights(num_branches=3 * n)

    def _init_weights(self, num_branches):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 "fan_out" init, as in the paper's CIFAR experiments
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.fixup:
            # Fixup rule: scale the branch's first conv by L^(-1/(2m-2)) with m=2 layers per
            # branch, zero its last conv and the classifier, so each branch starts as identity.
            for block in self.blocks():
                block.conv1.weight.data.mul_(num_branches ** -0.5)
                nn.init.zeros_(block.conv2.weight)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def stages(self):
        return [self.stage1, self.stage2, self.stage3]

    def blocks(self):
        return [block for stage in self.stages() for block in stage]

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.fixup:
            x = x + self.stem_bias
        for stage in self.stages():
            x = stage(x)
        x = self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        if self.fixup:
            x = x + self.fc_bias
        return self.fc(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())

