"""Hard-example capture (tlserve/service/capture.py): what is written where, within its budget, and
that a failing or full disk never fails a request; end to end through a real server, and the
captured folder trained on from the run that served it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.images import encoded
from tlserve.service import logs
from tlserve.service.capture import JSONL, PARTIAL, Capturer, label_folder, safe_name
from tlserve.service.domain import Prediction
from tlserve.service.launch import ServerProcess
from tlserve.service.metrics import Metrics
from tlserve.service.settings import ServerSettings

LABELS = ["red", "green", "blue"]


def prediction(probabilities: list[list[float]], novelty: list[float] | None = None) -> Prediction:
    return Prediction(
        "colors", 3, np.asarray(probabilities, np.float32), LABELS, None,
        None if novelty is None else np.asarray(novelty),
    )  # fmt: skip


def capturer(root: Path, **settings: Any) -> tuple[Capturer, Metrics]:
    metrics = Metrics()
    return Capturer(ServerSettings(capture_dir=root, **settings), metrics), metrics


def outcome(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value("tlserve_captures_total", {"model": "colors", "outcome": name})
    return -1.0 if value is None else value


def journal(root: Path) -> list[dict[str, Any]]:
    path = root / "colors" / JSONL
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fill_the_disk_in_the_second_line(monkeypatch: Any) -> None:
    """The writer's second os.write (the second capture's journal line) writes half, then fails."""
    from tlserve.service import capture as module

    real_write, calls = module.os.write, []

    def full_once(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 2:
            real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(module.os, "write", full_once)


def test_triggers_layout_and_journal(tmp_path: Path) -> None:
    """Low confidence and novelty pick their images; each is written as sent under its predicted
    label, named by the request id, with its line in captures.jsonl."""
    root = tmp_path / "captured"
    capture, metrics = capturer(root, capture_below=0.6, capture_novelty_above=1.0)
    images = [encoded("red"), encoded("green", "JPEG"), encoded("blue")]
    token = logs.request_id.set("req-1")
    try:
        scores = [[0.9, 0.05, 0.05], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8]]
        capture.offer(prediction(scores, [0.5, 0.7, 1.4]), images)
    finally:
        logs.request_id.reset(token)
    capture.close()
    lines = journal(root)
    assert [(e["file"], e["trigger"]) for e in lines] == [
        ("green/req-1-1.jpg", ["low_confidence"]),
        ("blue/req-1-2.png", ["novelty"]),
    ]
    assert (root / "colors" / "green" / "req-1-1.jpg").read_bytes() == images[1]  # the bytes sent
    assert (root / "colors" / "blue" / "req-1-2.png").read_bytes() == images[2]
    assert not (root / "colors" / "red").exists()
    first = lines[0]
    assert (first["request_id"], first["model"], first["version"]) == ("req-1", "colors", 3)
    assert first["label"] == "green"
    assert first["top"][0] == ["green", 0.5] and len(first["top"]) == 3 and first["novelty"] == 0.7
    assert first["time"].endswith("Z")
    assert outcome(metrics, "written") == 2 and outcome(metrics, "failed") == 0
    assert metrics.registry.get_sample_value("tlserve_capture_files") == 2
    assert not list((root / PARTIAL).iterdir())


def test_pixel_tensors_are_written_as_png_and_sampling(tmp_path: Path) -> None:
    root = tmp_path / "captured"
    capture, metrics = capturer(root, capture_sample=1.0)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    capture.offer(prediction([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]), pixels)
    capture.close()
    lines = journal(root)
    assert [e["trigger"] for e in lines] == [["sample"], ["sample"]]
    written = np.asarray(Image.open(root / "colors" / lines[1]["file"]))
    assert lines[1]["file"].startswith("blue/") and lines[1]["file"].endswith(".png")
    assert outcome(metrics, "written") == 2
    np.testing.assert_array_equal(written, np.rint(pixels[1]).astype(np.uint8))
    capture, metrics = capturer(root, capture_sample=1.0)  # uint8 tensors are written as they came
    exact = np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    capture.offer(prediction([[0.9, 0.05, 0.05]]), exact)
    capture.close()
    np.testing.assert_array_equal(
        np.asarray(Image.open(root / "colors" / journal(root)[2]["file"])), exact[0]
    )
    assert outcome(metrics, "written") == 1

    none = tmp_path / "none"
    capture, metrics = capturer(none, capture_sample=0.0, capture_below=0.01)  # no image is that unsure
    capture.offer(prediction([[0.9, 0.05, 0.05]]), pixels[:1])
    capture.close()
    assert journal(none) == [] and outcome(metrics, "written") == 0


def test_request_ids_and_labels_never_leave_the_folder(tmp_path: Path) -> None:
    assert safe_name("../../etc/passwd", "x") == "_.._etc_passwd"
    assert safe_name("..", "fallback") == "fallback" and safe_name("", "fallback") == "fallback"
    assert label_folder("digit_7") == "digit_7" and label_folder("a/b") == "a_b"
    assert label_folder("..") == "unnamed" and label_folder(".hidden") == "hidden"
    root = tmp_path / "captured"
    capture, _ = capturer(root, capture_sample=1.0)
    token = logs.request_id.set("../../escape")
    try:
        for _ in range(2):  # a client reusing its request id
            capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red")])
    finally:
        logs.request_id.reset(token)
    capture.close()
    names = sorted(p.name for p in (root / "colors" / "red").iterdir())
    assert names == ["_.._escape-1.png", "_.._escape.png"]
    assert [e["request_id"] for e in journal(root)] == ["../../escape"] * 2  # as sent, in the journal only
    assert {p.name for p in tmp_path.iterdir()} == {"captured"}


def test_the_budget_counts_what_is_there_and_frees_when_files_go(tmp_path: Path, monkeypatch: Any) -> None:
    from tlserve.service import capture as module

    root = tmp_path / "captured"
    (root / "colors" / "red").mkdir(parents=True)
    (root / "colors" / "red" / "earlier.png").write_bytes(encoded("red"))  # from a previous run
    capture, metrics = capturer(root, capture_sample=1.0, capture_max_files=3)
    for _ in range(4):
        capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red")])
    capture.close()
    assert len(list((root / "colors" / "red").iterdir())) == 3
    assert outcome(metrics, "written") == 2 and outcome(metrics, "budget") == 2
    assert len(journal(root)) == 2

    monkeypatch.setattr(module, "RESCAN_S", 0.0)  # files moved away (relabelled elsewhere) free room
    capture, metrics = capturer(root, capture_sample=1.0, capture_max_files=3)
    shutil.rmtree(root / "colors" / "red")
    capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red")])
    capture.close()
    assert outcome(metrics, "written") == 1

    small = tmp_path / "small"  # bytes: room for one image; its journal line is the only overshoot
    limit = len(encoded("red")) + 10
    capture, metrics = capturer(small, capture_sample=1.0, capture_max_bytes=limit)
    capture.offer(prediction([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]), [encoded("red"), encoded("red")])
    capture.close()
    assert outcome(metrics, "written") == 1 and outcome(metrics, "budget") == 1
    on_disk = sum(p.stat().st_size for p in small.rglob("*") if p.is_file())
    assert limit < on_disk < limit + 400


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_a_failing_disk_never_fails_the_request(tmp_path: Path, where: str) -> None:
    """A folder that cannot be made (below a regular file; sysfs, read-only even for root): each
    image is counted failed, the offer returns, the writer keeps going."""
    if where == "under a file":
        (tmp_path / "file").write_text("not a folder")
        root = tmp_path / "file" / "captured"
    else:
        root = Path("/sys/tlserve-capture-test")
        if not Path("/sys").is_dir():
            pytest.skip("no /sys here")
    capture, metrics = capturer(root, capture_sample=1.0)
    for _ in range(3):
        capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red")])
    capture.close()
    assert outcome(metrics, "failed") == 3 and outcome(metrics, "written") == 0
    assert not root.exists()


def test_a_full_queue_drops_rather_than_waits(tmp_path: Path, monkeypatch: Any) -> None:
    from tlserve.service import capture as module

    monkeypatch.setattr(module, "PENDING_BYTES", 1)
    capture, metrics = capturer(tmp_path / "captured", capture_sample=1.0)
    capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red")])
    capture.close()
    assert outcome(metrics, "queue_full") == 1 and outcome(metrics, "written") == 0


def test_the_queue_drains_whatever_passes_through_it(tmp_path: Path, monkeypatch: Any) -> None:
    """Room for about one image at a time: offered one after another, each once the last is
    written, every image is written (the pending count goes back to zero each time)."""
    import time

    from tlserve.service import capture as module

    image = encoded("red")
    monkeypatch.setattr(module, "PENDING_BYTES", len(image) + 10)
    capture, metrics = capturer(tmp_path / "captured", capture_sample=1.0)
    for n in range(1, 6):
        capture.offer(prediction([[0.9, 0.05, 0.05]]), [image])
        deadline = time.monotonic() + 10
        while outcome(metrics, "written") < n and time.monotonic() < deadline:
            time.sleep(0.01)
    capture.close()
    assert outcome(metrics, "written") == 5 and outcome(metrics, "queue_full") == 0


def test_a_failed_journal_write_leaves_neither_half_a_line_nor_its_image(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A disk that fills in the middle of a line: the line is cut off again and its image removed;
    the next capture's line parses."""
    fill_the_disk_in_the_second_line(monkeypatch)
    root = tmp_path / "captured"
    capture, metrics = capturer(root, capture_sample=1.0)
    for seed in range(3):
        capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red", seed=seed)])
    capture.close()
    lines = journal(root)  # json.loads on every line
    assert len(lines) == 2 and outcome(metrics, "failed") == 1 and outcome(metrics, "written") == 2
    assert sorted(p.name for p in (root / "colors" / "red").iterdir()) == sorted(
        Path(e["file"]).name for e in lines
    )


def test_a_half_line_that_could_not_be_cut_is_ended_before_the_next(tmp_path: Path, monkeypatch: Any) -> None:
    """Half a line written and the truncation failing too: the next line starts on a line of its own."""
    from tlserve.service import capture as module

    def cannot_truncate(fd: int, size: int) -> None:
        raise OSError(5, "Input/output error")

    fill_the_disk_in_the_second_line(monkeypatch)
    monkeypatch.setattr(module.os, "ftruncate", cannot_truncate)
    root = tmp_path / "captured"
    capture, metrics = capturer(root, capture_sample=1.0)
    for seed in range(3):
        capture.offer(prediction([[0.9, 0.05, 0.05]]), [encoded("red", seed=seed)])
    capture.close()
    lines = (root / "colors" / JSONL).read_text().splitlines()
    assert len(lines) == 3 and outcome(metrics, "written") == 2
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(None)
    assert parsed[1] is None and parsed[0] is not None and parsed[2] is not None  # the fragment alone


def test_settings_from_several_sources_are_checked_together(tmp_path: Path, monkeypatch: Any) -> None:
    """capture_dir in the environment and a trigger in a flag (or a model's in the environment and
    the folder in a file) are one valid configuration; a model's variable adds to its file section."""
    import pydantic

    from tlserve.service.settings import load_settings

    monkeypatch.setenv("TLSERVE_CAPTURE_DIR", str(tmp_path))
    assert load_settings(None, capture_below=0.5).capture_below == 0.5
    monkeypatch.delenv("TLSERVE_CAPTURE_DIR")
    config = tmp_path / "tlserve.json"
    config.write_text(
        json.dumps({"capture_dir": str(tmp_path), "models": {"colors": {"unknown_below": 0.3}}})
    )
    monkeypatch.setenv("TLSERVE_MODELS__COLORS__CAPTURE_BELOW", "0.5")
    colors = load_settings(config).for_model("colors")
    assert (colors.capture_below, colors.unknown_below) == (0.5, 0.3)
    monkeypatch.delenv("TLSERVE_MODELS__COLORS__CAPTURE_BELOW")
    with pytest.raises(ValueError, match="nothing triggers a capture"):
        load_settings(None, capture_dir=tmp_path)
    # nested: one label from the environment beside the file's others; a broken section still refused
    config.write_text(json.dumps({"models": {"colors": {"version_labels": {"stable": 1, "canary": 2}}}}))
    monkeypatch.setenv("TLSERVE_MODELS__COLORS__VERSION_LABELS__CANARY", "3")
    assert load_settings(config).for_model("colors").version_labels == {"stable": 1, "canary": 3}
    config.write_text(json.dumps({"models": {"colors": "oops"}}))
    with pytest.raises(pydantic.ValidationError, match=r"models\.colors"):
        load_settings(config)


def test_settings_want_a_folder_and_a_trigger_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing triggers a capture"):
        ServerSettings(capture_dir=tmp_path)
    with pytest.raises(ValueError, match="capture_dir is not"):
        ServerSettings(capture_below=0.5)
    per_model = ServerSettings(capture_dir=tmp_path, models={"colors": {"capture_below": 0.5}})
    assert per_model.for_model("colors").capture_below == 0.5
    assert not per_model.for_model("other").captures


def test_a_server_captures_and_its_folder_trains(exported: Any, run_dir: Path, tmp_path: Path) -> None:
    """The loop: a server captures what it answered (encoded images and pixel tensors, several
    requests), the captured folder is relabelled by moving files and trained on from the run that
    was served."""
    from tests.service.test_prometheus import photographs
    from tlserve.training import rundir
    from tlserve.training.config import TrainConfig
    from tlserve.training.trainer import train

    repository = tmp_path / "models"
    shutil.copytree(exported.path, repository / "colors" / "1")
    captured = tmp_path / "captured"
    colours = {c: [encoded(c, seed=s) for s in range(4)] for c in ("red", "green", "blue")}
    server = ServerProcess(repository, "--capture-dir", str(captured), "--capture-sample", "1",
                           "--capture-novelty-above", "1.0")  # fmt: skip
    try:
        with server.client(timeout_s=60) as client:
            client.wait_ready("colors")
            for images in colours.values():
                for image in images:
                    client.classify("colors", [image], top_k=1)
            client.classify("colors", photographs()[:3])
            red = Image.open(io.BytesIO(colours["red"][0])).resize((32, 32))
            client.predict("colors", np.asarray(red, np.float32)[None])
    finally:
        assert server.stop() == 0, server.log
    model_dir = captured / "colors"
    lines = journal(captured)
    assert len(lines) == 12 + 3 + 1
    assert {e["version"] for e in lines} == {1} and all("sample" in e["trigger"] for e in lines)
    assert any("novelty" in e["trigger"] for e in lines[12:15])  # photographs: beyond the training edge
    for line in lines:
        assert (model_dir / line["file"]).is_file()
    # relabelling: the photographs go away, each colour's images into its own folder
    for line in lines[12:15]:
        (model_dir / line["file"]).unlink()
    for line in lines[:12]:
        truth = next(c for c, images in colours.items() if (model_dir / line["file"]).read_bytes() in images)
        (model_dir / truth).mkdir(exist_ok=True)
        (model_dir / line["file"]).rename(model_dir / truth / Path(line["file"]).name)
    for folder in model_dir.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    out = tmp_path / "retrained"
    train(TrainConfig(data_dir=model_dir, out=out, base=str(run_dir), epochs=3, batch_size=4, augment=()))
    dataset = rundir.read_run_json(out)["dataset"]
    assert dataset["classes"] == ["blue", "green", "red"]
    assert dataset["train_images"] + dataset["val_images"] == 13
