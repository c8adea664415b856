"""`make images` (deploy/images.py) builds every Dockerfile stage with podman and smoke-tests it (slow).

Skipped where podman or mmdebstrap is missing, with the reason; where they are installed, a broken
build or smoke test fails, under CI=true too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MISSING = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: see docs/deploy.md")
def test_every_image_builds_and_passes_its_smoke_test(tmp_path: Path) -> None:
    work = tmp_path / "images"
    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "images.py"), "--work", str(work)],
                          capture_output=True, text=True, timeout=5400, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    assert sorted(report) == ["serve", "serve-gpu", "serve-nobuckets", "serve-tf", "train"]
    assert report["train"]["smoke"] == "train + export"
    for stage in ("serve", "serve-nobuckets", "serve-tf"):
        smoke = report[stage]["smoke"]
        assert smoke["uid"] == "10001" and smoke["stop_s"] < 15, (stage, smoke)
    # the serving image has no TensorFlow: well under the TensorFlow one
    assert report["serve"]["size_mb"] < report["serve-tf"]["size_mb"] / 2
    # without the bucket extras: smaller, and a bucket repository is refused with the extra to install
    assert report["serve-nobuckets"]["size_mb"] < report["serve"]["size_mb"] - 30
    assert "tlserve[s3]" in report["serve-nobuckets"]["bucket_refusal"]
