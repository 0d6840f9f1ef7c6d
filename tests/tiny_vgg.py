"""A model family as a contributor writes it into harness/models/ (tests copy it there, as
vgg.py, in a copy of the project): two 3x3 convs, each with optional BatchNorm, ReLU and a
2x2 max pool, global average pooling and a linear classifier.
"""

from dataclasses import dataclass

from torch import nn

from harness.config.rules import at_least
from harness.config.schema import register_model

LABELS = {"family": "VGG", "columns": {
    "normalisation": {"axis": "batchnorm", "values": {"true": "BatchNorm", "false": "no BatchNorm"}}}}


@dataclass
class TinyVGGConfig:
    _target_: str = f"{__name__}.TinyVGG"  # wherever the module is placed
    width: int = 8  # filters of the first conv; the second has twice as many
    batchnorm: bool = True


register_model("vgg", TinyVGGConfig)


def check(m) -> None:
    at_least(m, "width", 1, "must be a positive number of filters")


class TinyVGG(nn.Sequential):
    def __init__(self, width: int = 8, batchnorm: bool = True, num_classes: int = 10, in_channels: int = 3):
        layers = []
        for conv_in, conv_out in ((in_channels, width), (width, 2 * width)):
            layers += [nn.Conv2d(conv_in, conv_out, 3, padding=1, bias=not batchnorm),
                       nn.BatchNorm2d(conv_out) if batchnorm else nn.Identity(), nn.ReLU(), nn.MaxPool2d(2)]
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
