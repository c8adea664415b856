"""How well a version's novelty (and its top score) tells images of another domain from its own.

Scores the held-out images of the model's own classes (a folder with one subfolder per class, e.g.
the demo's ``data/target_val``) and three sets of images from other domains that installed packages
ship (no download): scikit-image's sample images, its LFW face subset (100 faces) and
scikit-learn's two sample photographs (and their four crops, as the demo sends them). Prints, per
set, the AUROC of novelty (1.0: every stranger scores above every own image; 0.5: chance), the
AUROC of 1 - top score for comparison, and the share of each set beyond novelty 1.0 (the documented
"unknown" threshold). The images go through the version's ONNX file at its input size (bilinear
resize without antialiasing, as ``predict_images`` and the server do); novelty is computed as the
server computes it.

    python benchmarks/novelty_auroc.py demo-output/models/digits/1 demo-output/data/target_val
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tlserve import repository as repo
from tlserve.service.images import resize_bilinear
from tlserve.service.monitor import Reference


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside score > an inside score), ties counted half."""
    above = (outside[:, None] > inside[None, :]).mean()
    ties = (outside[:, None] == inside[None, :]).mean()
    return float(above + 0.5 * ties)


def strangers() -> dict[str, list[np.ndarray]]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    from tlserve.demo_serving import other_domain

    samples = []
    for name in ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel",
                 "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon",
                 "page", "retina", "rocket", "text"):  # fmt: skip
        image = np.asarray(getattr(skimage.data, name)())
        samples.append((image * 255 if image.dtype == bool else image).astype(np.uint8))
    faces = [(face * 255).astype(np.uint8) for face in skimage.data.lfw_subset()[:100]]
    photos = list(load_sample_images().images)
    photos += [np.asarray(Image.open(io.BytesIO(png))) for _, png in other_domain()]
    return {"scikit-image samples": samples, "LFW faces": faces, "scikit-learn photos + crops": photos}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "version_dir", type=Path, help="a version folder (manifest.json, model.onnx, reference.json)"
    )
    parser.add_argument("own", type=Path, help="held-out images of the model's classes, one folder per class")
    args = parser.parse_args()
    import onnxruntime as ort

    manifest = repo.Manifest.read(args.version_dir)
    data = repo.read_reference(args.version_dir, manifest)
    if data is None:
        print(f"{args.version_dir} has no reference statistics", file=sys.stderr)
        return 2
    reference = Reference.from_data(data)
    session = ort.InferenceSession(
        str(args.version_dir / repo.ONNX_FILES["fp32"]), providers=["CPUExecutionProvider"]
    )
    height, width = manifest.image_size
    name = session.get_inputs()[0].name

    def score(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.stack([
            resize_bilinear(np.asarray(Image.fromarray(i).convert("RGB"), np.float32), height, width)
            for i in images
        ])  # fmt: skip
        probabilities, embedding = session.run(["probabilities", "embedding"], {name: pixels})
        return reference.novelty(embedding), 1.0 - probabilities.max(axis=1)

    own = [
        np.asarray(Image.open(p))
        for p in sorted(args.own.glob("*/*"))
        if p.suffix.lower() in (".png", ".jpg")
    ]
    own_novelty, own_doubt = score(own)
    rows = {"own held-out images": {"images": len(own), "beyond_1": float((own_novelty > 1.0).mean())}}
    print(f"{args.version_dir}: {len(own)} own held-out images, novelty p50 {np.median(own_novelty):.2f}, "
          f"{(own_novelty > 1.0).mean():.1%} beyond 1.0")  # fmt: skip
    for label, images in strangers().items():
        novelty, doubt = score(images)
        row = rows[label] = {
            "images": len(images),
            "auroc_novelty": auroc(own_novelty, novelty),
            "auroc_top_score": auroc(own_doubt, doubt),
            "beyond_1": float((novelty > 1.0).mean()),
        }
        print(f"  {label:<28} {len(images):>3} images: AUROC novelty {row['auroc_novelty']:.3f}, "
              f"1 - top score {row['auroc_top_score']:.3f}; beyond 1.0: {row['beyond_1']:.0%}")  # fmt: skip
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
