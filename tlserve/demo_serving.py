"""The serving half of ``tlserve demo``: serve, monitor, capture, relabel, train again, hot swap.

The exported model is served with "unknown" at the documented starting threshold (novelty 1.0, the
training edge) and hard-example capture on (top score below 0.5, or novelty above 1.0); the demo
then plays production traffic (digits no run has seen, and a few photographs), plays the labeller
on what was captured (moves each digit to its true class folder, deletes the photographs), trains
again from the served run on its training images plus the captures, and exports that as version 2,
which the running server swaps in.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.errors import TlserveError

UNKNOWN_NOVELTY_ABOVE = 1.0
"""docs/serving.md, "Unknown": the training edge, where to start."""
CAPTURE_BELOW = 0.5
"""Calibrated scores mean what they say: below 0.5 the model is more likely wrong than right."""


def serve_demo(
    workdir: Path,
    paths: dict[str, Path],
    previous_run: Path,
    train_dir: Path,
    train: Callable[..., dict[str, Any]],
    calls: int = 50,
) -> None:
    """Serve the exported model with unknown and capture on, classify held-out digits and photographs,
    replay production traffic, relabel the captures, train (``train``: ``tlserve train`` with these
    arguments, its run.json) and export version 2, see it served; stop the server with SIGTERM."""
    from tlserve.service.launch import ServerProcess

    models, captured = workdir / "models", workdir / "captured"
    val_dir = paths["target_val"]
    print(f"\n== serving {models} over gRPC, with 'unknown' and hard-example capture ==", flush=True)
    reference = validation_novelty(models / "digits")
    flags = ["--capture-dir", str(captured), "--capture-below", str(CAPTURE_BELOW),
             "--capture-novelty-above", str(UNKNOWN_NOVELTY_ABOVE)]  # fmt: skip
    env = {"TLSERVE_MODELS__DIGITS__UNKNOWN_NOVELTY_ABOVE": str(UNKNOWN_NOVELTY_ABOVE)}
    print(f"$ TLSERVE_MODELS__DIGITS__UNKNOWN_NOVELTY_ABOVE={UNKNOWN_NOVELTY_ABOVE} "
          f"{shlex.join(['tlserve', 'serve', '--repository', str(models), *flags])}")  # fmt: skip
    if reference is not None:
        print(f"'unknown' above novelty {UNKNOWN_NOVELTY_ABOVE}, the training edge; the validation digits' "
              f"novelty is {reference} (reference.json): what lies beyond it is the share of digits "
              "it turns away too")  # fmt: skip
    with ServerProcess(models, *flags, env=env) as server:
        with server.client() as client:
            client.wait_ready("digits")
            print(f"server {server.target} ready in {time.perf_counter() - server.started:.1f} s")
            scorer = novelty_scorer(models / "digits")
            steady = held_out(client, val_dir, scorer)
            strangers(client, scorer)
            native = _p50(lambda: client.classify("digits", [steady]), calls)
            tfs = _p50(lambda: client.predict_images("digits", [steady]), calls)
            print(f"batch-1 latency over {calls} calls, p50: native {native:.2f} ms, TF Serving API "
                  f"{tfs:.2f} ms (an image no trigger captures)")  # fmt: skip
            truth = production(client, paths["production"], captured / "digits")
            retrained = relabel_and_train(
                workdir, paths, captured / "digits", truth, previous_run, train_dir, train
            )
            swap(client, models, retrained, val_dir)
        code = server.stop()
    if code != 0:
        raise TlserveError(f"the server exited with code {code}:\n{server.log}")
    print("server stopped cleanly (SIGTERM, exit code 0)")


def held_out(client: Any, val_dir: Path, scorer: Any) -> bytes:
    """Classify one held-out digit per class through both APIs with their novelty; the bytes of the
    one answered most surely (the latency probe, which no trigger captures)."""
    samples = [(c.name, sorted(c.glob("*.png"))[0]) for c in sorted(val_dir.iterdir()) if c.is_dir()]
    width = max(len(str(path.relative_to(val_dir))) for _, path in samples)
    print(f"{'image':<{width}}  {'true':<8} {'native Classify':<16} {'TF Serving Predict':<24} novelty")
    steady, best = samples[0][1].read_bytes(), -1.0
    labels = client.list_models()["digits"][-1].labels
    for digit, path in samples:
        data = path.read_bytes()
        answer = client.classify("digits", [data], top_k=1, embedding=True)
        top = answer.predictions[0][0]
        version, probabilities = client.predict_images("digits", [data])
        index = int(probabilities[0].argmax())
        novelty = _novelty(scorer, answer.embedding)
        print(f"{path.relative_to(val_dir)!s:<{width}}  {digit:<8} {top.label} {top.score:.3f}    "
              f"{labels[index]} {probabilities[0, index]:.3f} (v{version})     {novelty:.2f}")  # fmt: skip
        if top.label != "unknown" and top.score > best and novelty < UNKNOWN_NOVELTY_ABOVE:
            steady, best = data, top.score
    return steady


def strangers(client: Any, scorer: Any) -> None:
    print("images from another domain (scikit-learn's sample photographs, cropped):")
    for name, photo in other_domain():
        answer = client.classify("digits", [photo], top_k=2, embedding=True)
        shown = ", ".join(f"{label.label} {label.score:.3f}" for label in answer.predictions[0])
        print(f"  {name:<22} novelty {_novelty(scorer, answer.embedding):.2f}  {shown}")


def production(client: Any, folder: Path, captured: Path) -> dict[bytes, str]:
    """Send every digit under ``folder`` (one request each) and the photographs again; print what was
    captured; the true class of each image sent, by its bytes."""
    truth = {p.read_bytes(): p.parent.name for p in sorted(folder.glob("*/*.png"))}
    print(
        f"\n== production traffic: {len(truth)} digits no run has seen, and the 4 photographs ==", flush=True
    )
    right = 0
    for data, label in truth.items():
        right += client.classify("digits", [data], top_k=1).predictions[0][0].label == label
    for _, photo in other_domain():
        client.classify("digits", [photo], top_k=1)
    print(f"answered: {right} of {len(truth)} digits right ({right / len(truth):.3f})")
    lines = _settled(captured / "captures.jsonl")
    triggers: dict[str, int] = {}
    for line in lines:
        for why in line["trigger"]:
            triggers[why] = triggers.get(why, 0) + 1
    shown = ", ".join(f"{why} {n}" for why, n in sorted(triggers.items()))
    print(f"captured {len(lines)} images into {captured} ({shown}; an image may have both):")
    for folder in sorted(p for p in captured.iterdir() if p.is_dir()):
        print(f"  {folder.name}/  {len(list(folder.iterdir()))} images")
    if lines:
        print(f"  captures.jsonl, first line: {json.dumps(lines[0])}")
    return truth


def relabel_and_train(
    workdir: Path,
    paths: dict[str, Path],
    captured: Path,
    truth: dict[bytes, str],
    previous_run: Path,
    train_dir: Path,
    train: Callable[..., dict[str, Any]],
) -> Path:
    """Play the labeller (each captured digit to its true folder, photographs deleted), add the
    captures to the training images and train again from ``previous_run``; the new run dir."""
    print("\n== relabelling: the demo plays the labeller ==", flush=True)
    photos = {photo for _, photo in other_domain()}
    moved, deleted = 0, {"photographs": 0, "validation digits": 0}
    for path in sorted(captured.glob("*/*")):
        content = path.read_bytes()
        label = truth.get(content)
        if (
            label is None
        ):  # NOTE: the held-out digits asked about first are the validation set: not trained on
            path.unlink()
            deleted["photographs" if content in photos else "validation digits"] += 1
        elif label != path.parent.name:
            (captured / label).mkdir(exist_ok=True)
            path.rename(captured / label / path.name)
            moved += 1
    kept = sum(1 for _ in captured.glob("*/*"))
    photographs, validation = deleted["photographs"], deleted["validation digits"]
    print(f"moved {moved} captured digits to their true class folder (the model had them wrong); deleted "
          f"{photographs} photographs (no digit) and {validation} of the held-out validation digits asked "
          f"about above (they must not be trained on); {kept} captures kept")  # fmt: skip
    data = workdir / "data" / "train_plus_captured"
    shutil.copytree(train_dir, data)
    for path in captured.glob("*/*"):
        shutil.copy2(path, data / path.parent.name / f"captured-{path.name}")
    print(f"$ cp -r {train_dir} {data}; "
          f"cp {captured}/CLASS/* {data}/CLASS/")  # fmt: skip
    print(f"\n== training again from the served run ({previous_run.name}) on {data.name} ==", flush=True)
    out = workdir / "runs" / "loop-finetune"
    report = train(data, "--out", out, "--base", previous_run, "--mode", "finetune",
                           "--val-data", paths["target_val"])  # fmt: skip
    before = json.loads((previous_run / "run.json").read_text())["metrics"]["accuracy"]
    after = float(report["metrics"]["accuracy"])
    print(f"val accuracy on the same {report['metrics'].get('images', '')} validation digits: "
          f"{before:.3f} (served) -> {after:.3f} (with {kept} captures)")  # fmt: skip
    return out


def swap(client: Any, models: Path, run_dir: Path, val_dir: Path) -> None:
    """Export ``run_dir`` as the next version and wait until the running server answers with it."""
    from tlserve import repository as repo
    from tlserve.exporters.export import ExportOptions, export

    print(f"\n$ tlserve export {run_dir} --repository {models} --name digits", flush=True)
    result = export(ExportOptions(run_dir=run_dir, repository=models, name="digits"))
    version = max(repo.versions(models / "digits"))
    sample = next(iter(sorted(val_dir.glob("*/*.png")))).read_bytes()
    deadline = time.monotonic() + 120
    while client.classify("digits", [sample], top_k=1).version != version:
        if time.monotonic() > deadline:
            raise TlserveError(f"the server did not swap in version {version} of {result.path} within 120 s")
        time.sleep(0.5)
    print(f"the running server swapped in version {version} (no restart); the held-out digits again:")
    for path in sorted(val_dir.glob("digit_*/0000.png")):
        answer = client.classify("digits", [path.read_bytes()], top_k=1)
        top = answer.predictions[0][0]
        shown = f"{top.label} {top.score:.3f} (version {answer.version})"
        print(f"  {path.relative_to(val_dir)}  {path.parent.name}  {shown}")
    quantiles = validation_novelty(models / "digits")
    if quantiles is not None:
        print(f"version {version}'s validation novelty is {quantiles}: each version has its own training "
              "edge, so choose unknown_novelty_above again for it (docs/loop.md)")  # fmt: skip


def validation_novelty(model_dir: Path) -> str | None:
    """The newest version's validation novelty quantiles, as text; None without reference statistics."""
    data = _reference(model_dir)
    if data is None or "validation_novelty" not in data:
        return None
    quantiles, values = data["validation_novelty"]["quantiles"], data["validation_novelty"]["values"]
    return ", ".join(f"p{round(q * 100)} {v:.2f}" for q, v in zip(quantiles, values, strict=True))


def _reference(model_dir: Path) -> dict[str, Any] | None:
    from tlserve import repository as repo

    version_dir = model_dir / str(max(repo.versions(model_dir)))
    return repo.read_reference(version_dir, repo.Manifest.read(version_dir))


def novelty_scorer(model_dir: Path) -> Any:
    """The newest version's centroids (``tlserve.novelty.Centroids``) from its reference.json."""
    from tlserve.service.monitor import Reference

    data = _reference(model_dir)
    return None if data is None else Reference.from_data(data).centroids_of


def _novelty(scorer: Any, embedding: np.ndarray | None) -> float:
    if scorer is None or embedding is None:
        return float("nan")
    return float(scorer.novelty(embedding)[0])


def _settled(path: Path, quiet_s: float = 1.0, limit_s: float = 20.0) -> list[dict[str, Any]]:
    """The lines of a captures.jsonl once the writer has been quiet for ``quiet_s``."""
    deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(path.read_text().splitlines()) if path.exists() else 0
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.1)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _p50(call: Any, calls: int) -> float:
    from tlserve.service.bench.load import p50_ms

    return float(p50_ms(call, calls, warmup=0))


def other_domain() -> list[tuple[str, bytes]]:
    """Crops of the two photographs scikit-learn installs (no download), as PNG."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    crops = []
    for name, photo in zip(("china.jpg", "flower.jpg"), load_sample_images().images, strict=True):
        h, w = photo.shape[:2]
        for where, (top, left) in (("top left", (0, 0)), ("centre", (h // 4, w // 4))):
            buffer = io.BytesIO()
            Image.fromarray(photo[top : top + h // 2, left : left + w // 2]).save(buffer, "PNG")
            crops.append((f"{name} {where}", buffer.getvalue()))
    return crops
