"""The table of pretrained bases: one row of facts per Keras Application.

Every row is built the same way (``keras.applications.<Builder>(include_top=False, ...)``) and carries
its own preprocessing mode. For the 18 bases of the seed table the trainer bakes that preprocessing
into the model; the newer families (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3) carry it
inside the network itself (``include_preprocessing``), so nothing is added. Either way every artifact
takes raw RGB pixels 0..255. ``params_m``, ``depth``, ``top1`` and ``top5`` are the figures Keras
publishes for the full ImageNet classifier (top included); a table-driven test checks the parameter
counts against the networks we build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PreprocessMode = Literal["tf", "caffe", "torch", "included"]
Family = Literal["seed", "newer"]


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
    """What the network expects; ``included``: its own first layers map 0..255 pixels (Keras'
    ``preprocess_input`` for it is a pass-through), so the trainer adds nothing."""
    default_size: int
    min_size: int
    params_m: float
    """Parameter count of the full ImageNet classifier, in millions: Keras' published figure, or
    where Keras publishes none that fits its network (``params_published`` False) the count of the
    Keras 3 network itself."""
    depth: int | None
    """Published depth (layers with weights on the longest path); None where Keras publishes none."""
    top1: float | None
    """Published ImageNet top-1 accuracy of the ImageNet weights, in %; None where Keras publishes none."""
    top5: float | None
    family: Family
    """``seed``: the 18 of the original table; ``newer``: the families Keras added since."""
    imagenet_sizes: tuple[int, ...] = ()
    """Input sizes for which ImageNet weights exist; empty means any size from min_size."""
    params_published: bool = True


def _seed(
    name: str,
    builder: str,
    module: str,
    mode: PreprocessMode,
    default: int,
    minimum: int,
    params: float,
    depth: int,
    top1: float,
    top5: float,
    sizes: tuple[int, ...] = (),
) -> BaseSpec:
    return BaseSpec(name, builder, module, mode, default, minimum, params, depth, top1, top5, "seed", sizes)


def _newer(
    name: str,
    builder: str,
    module: str,
    default: int,
    params: float,
    depth: int | None,
    top1: float | None,
    top5: float | None,
    *,
    published: bool = True,
    sizes: tuple[int, ...] = (),
) -> BaseSpec:
    return BaseSpec(
        name, builder, module, "included", default, 32, params, depth, top1, top5, "newer", sizes, published
    )


# NOTE: figures from Keras' table of applications (keras-io templates/api/applications/index.md);
# MobileNetV3's top-1 from the docstring of keras.applications.mobilenet_v3. Keras publishes no
# ConvNeXt row, and MobileNetV3's docstring gives the TF-slim checkpoints' parameter counts (2.9 M,
# 5.4 M), which are not those of the Keras network: those rows carry the Keras 3 networks' own counts.
BASES: tuple[BaseSpec, ...] = (
    _seed("xception", "Xception", "xception", "tf", 299, 71, 22.9, 81, 79.0, 94.5),
    _seed("vgg16", "VGG16", "vgg16", "caffe", 224, 32, 138.4, 16, 71.3, 90.1),
    _seed("vgg19", "VGG19", "vgg19", "caffe", 224, 32, 143.7, 19, 71.3, 90.0),
    _seed("resnet50", "ResNet50", "resnet", "caffe", 224, 32, 25.6, 107, 74.9, 92.1),
    _seed("resnet50_v2", "ResNet50V2", "resnet_v2", "tf", 224, 32, 25.6, 103, 76.0, 93.0),
    _seed("resnet101", "ResNet101", "resnet", "caffe", 224, 32, 44.7, 209, 76.4, 92.8),
    _seed("resnet101_v2", "ResNet101V2", "resnet_v2", "tf", 224, 32, 44.7, 205, 77.2, 93.8),
    _seed("resnet152", "ResNet152", "resnet", "caffe", 224, 32, 60.4, 311, 76.6, 93.1),
    _seed("resnet152_v2", "ResNet152V2", "resnet_v2", "tf", 224, 32, 60.4, 307, 78.0, 94.2),
    _seed("inception_v3", "InceptionV3", "inception_v3", "tf", 299, 75, 23.9, 189, 77.9, 93.7),
    _seed("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299, 75, 55.9, 449,
          80.3, 95.3),
    _seed("mobilenet", "MobileNet", "mobilenet", "tf", 224, 32, 4.3, 55, 70.4, 89.5, (128, 160, 192, 224)),
    _seed("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224, 32, 3.5, 105, 71.3, 90.1,
          (96, 128, 160, 192, 224)),
    _seed("densenet121", "DenseNet121", "densenet", "torch", 224, 32, 8.1, 242, 75.0, 92.3),
    _seed("densenet169", "DenseNet169", "densenet", "torch", 224, 32, 14.3, 338, 76.2, 93.2),
    _seed("densenet201", "DenseNet201", "densenet", "torch", 224, 32, 20.2, 402, 77.3, 93.6),
    _seed("nasnet_mobile", "NASNetMobile", "nasnet", "tf", 224, 32, 5.3, 389, 74.4, 91.9, (224,)),
    _seed("nasnet_large", "NASNetLarge", "nasnet", "tf", 331, 32, 88.9, 533, 82.5, 96.0, (331,)),
    _newer("efficientnet_b0", "EfficientNetB0", "efficientnet", 224, 5.3, 132, 77.1, 93.3),
    _newer("efficientnet_b1", "EfficientNetB1", "efficientnet", 240, 7.9, 186, 79.1, 94.4),
    _newer("efficientnet_b2", "EfficientNetB2", "efficientnet", 260, 9.2, 186, 80.1, 94.9),
    _newer("efficientnet_b3", "EfficientNetB3", "efficientnet", 300, 12.3, 210, 81.6, 95.7),
    _newer("efficientnet_b4", "EfficientNetB4", "efficientnet", 380, 19.5, 258, 82.9, 96.4),
    _newer("efficientnet_b5", "EfficientNetB5", "efficientnet", 456, 30.6, 312, 83.6, 96.7),
    _newer("efficientnet_b6", "EfficientNetB6", "efficientnet", 528, 43.3, 360, 84.0, 96.8),
    _newer("efficientnet_b7", "EfficientNetB7", "efficientnet", 600, 66.7, 438, 84.3, 97.0),
    _newer("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224, 7.2, None, 78.7, 94.3),
    _newer("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240, 8.2, None, 79.8, 95.0),
    _newer("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260, 10.2, None, 80.5, 95.1),
    _newer("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300, 14.5, None, 82.0, 95.8),
    _newer("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384, 21.6, None, 83.9, 96.7),
    _newer("efficientnet_v2_m", "EfficientNetV2M", "efficientnet_v2", 480, 54.4, None, 85.3, 97.4),
    _newer("efficientnet_v2_l", "EfficientNetV2L", "efficientnet_v2", 480, 119.0, None, 85.7, 97.5),
    _newer("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 28.6, None, None, None, published=False),
    _newer("convnext_small", "ConvNeXtSmall", "convnext", 224, 50.2, None, None, None, published=False),
    _newer("convnext_base", "ConvNeXtBase", "convnext", 224, 88.6, None, None, None, published=False),
    _newer("convnext_large", "ConvNeXtLarge", "convnext", 224, 197.8, None, None, None, published=False),
    _newer("convnext_xlarge", "ConvNeXtXLarge", "convnext", 224, 350.2, None, None, None, published=False),
    _newer("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, 2.6, None, 68.1, None,
           published=False, sizes=(224,)),
    _newer("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, 5.5, None, 75.6, None,
           published=False, sizes=(224,)),
)  # fmt: skip

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
    header = ("base", "keras builder", "params (M)", "depth", "top-1 %", "top-5 %", "default size",
              "min size", "preprocess", "table")  # fmt: skip

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    rows = [
        (
            s.name,
            s.builder,
            f"{s.params_m:.1f}" + ("" if s.params_published else "*"),
            "-" if s.depth is None else str(s.depth),
            figure(s.top1),
            figure(s.top5),
            str(s.default_size),
            str(s.min_size),
            s.preprocessing,
            s.family,
        )
        for s in BASES
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    lines += [
        "",
        "table: seed = the 18 classic bases of the original table; newer = the families Keras added "
        "since (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).",
        "params, depth, top-1/top-5: Keras' published figures for the ImageNet classifier (top "
        "included), '-' where Keras publishes none; * counted from the Keras network (Keras publishes "
        "no figure that fits it).",
        "preprocess: tf = [-1, 1]; caffe = RGB->BGR minus ImageNet mean; torch = [0, 1] then ImageNet "
        "mean/std, baked into the model by the trainer; included = the network's own first layers do "
        "it (nothing is added). Either way inputs are RGB pixels 0..255.",
    ]
    return "\n".join(lines)
