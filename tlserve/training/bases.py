"""The table of pretrained bases: one row of facts per Keras Application.

Every row is built the same way (``keras.applications.<Builder>(include_top=False, ...)``) and carries
its own preprocessing mode, which the trainer bakes into the model so that every artifact takes raw
RGB pixels 0..255. ``params_m`` and ``depth`` are the figures Keras publishes for the full ImageNet
classifier (top included); a table-driven test checks them against the networks we build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PreprocessMode = Literal["tf", "caffe", "torch"]


@dataclass(frozen=True)
class BaseSpec:
    """Facts about one Keras Application used as a convolutional base."""

    name: str
    """snake_case name used on the command line (``--base``)."""
    builder: str
    """Function in ``keras.applications`` that builds the network."""
    module: str
    """Submodule of ``keras.applications`` that holds its ``preprocess_input``."""
    preprocessing: PreprocessMode
    default_size: int
    min_size: int
    params_m: float
    """Published parameter count of the full ImageNet classifier, in millions."""
    depth: int
    """Published depth (layers with weights on the longest path)."""
    imagenet_sizes: tuple[int, ...] = ()
    """Input sizes for which ImageNet weights exist; empty means any size from min_size."""


BASES: tuple[BaseSpec, ...] = (
    BaseSpec("xception", "Xception", "xception", "tf", 299, 71, 22.9, 81),
    BaseSpec("vgg16", "VGG16", "vgg16", "caffe", 224, 32, 138.4, 16),
    BaseSpec("vgg19", "VGG19", "vgg19", "caffe", 224, 32, 143.7, 19),
    BaseSpec("resnet50", "ResNet50", "resnet", "caffe", 224, 32, 25.6, 107),
    BaseSpec("resnet50_v2", "ResNet50V2", "resnet_v2", "tf", 224, 32, 25.6, 103),
    BaseSpec("resnet101", "ResNet101", "resnet", "caffe", 224, 32, 44.7, 209),
    BaseSpec("resnet101_v2", "ResNet101V2", "resnet_v2", "tf", 224, 32, 44.7, 205),
    BaseSpec("resnet152", "ResNet152", "resnet", "caffe", 224, 32, 60.4, 311),
    BaseSpec("resnet152_v2", "ResNet152V2", "resnet_v2", "tf", 224, 32, 60.4, 307),
    BaseSpec("inception_v3", "InceptionV3", "inception_v3", "tf", 299, 75, 23.9, 189),
    BaseSpec("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299, 75, 55.9, 449),
    BaseSpec("mobilenet", "MobileNet", "mobilenet", "tf", 224, 32, 4.3, 55, (128, 160, 192, 224)),
    BaseSpec(
        "mobilenet_v2",
        "MobileNetV2",
        "mobilenet_v2",
        "tf",
        224,
        32,
        3.5,
        105,
        (96, 128, 160, 192, 224),
    ),
    BaseSpec("densenet121", "DenseNet121", "densenet", "torch", 224, 32, 8.1, 242),
    BaseSpec("densenet169", "DenseNet169", "densenet", "torch", 224, 32, 14.3, 338),
    BaseSpec("densenet201", "DenseNet201", "densenet", "torch", 224, 32, 20.2, 402),
    BaseSpec("nasnet_mobile", "NASNetMobile", "nasnet", "tf", 224, 32, 5.3, 389, (224,)),
    BaseSpec("nasnet_large", "NASNetLarge", "nasnet", "tf", 331, 32, 88.9, 533, (331,)),
)

_BY_NAME = {spec.name: spec for spec in BASES}


def base_names() -> list[str]:
    return [spec.name for spec in BASES]


def get_base(name: str) -> BaseSpec:
    """Return the row for ``name``; raise ``KeyError`` listing the valid names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown base {name!r}; valid bases: {', '.join(base_names())}, "
            "or a path to an earlier run dir or .keras file"
        ) from None


def format_table() -> str:
    """The table printed by ``tlserve bases``."""
    header = ("base", "keras builder", "params (M)", "depth", "default size", "min size", "preprocess")
    rows = [
        (
            s.name,
            s.builder,
            f"{s.params_m:.1f}",
            str(s.depth),
            str(s.default_size),
            str(s.min_size),
            s.preprocessing,
        )
        for s in BASES
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        "params and depth: Keras' published figures for the ImageNet classifier (top included). "
        "preprocess: tf = [-1, 1]; caffe = RGB->BGR minus ImageNet mean; torch = [0, 1] then "
        "ImageNet mean/std. It is baked into every model: inputs are RGB pixels 0..255."
    )
    return "\n".join(lines)
