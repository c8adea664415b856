from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_folder
from tlserve.exporters.export import ExportOptions, ExportResult, export
from tlserve.training import rundir
from tlserve.training.config import TrainConfig
from tlserve.training.trainer import train


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run that has learnt something (so parity compares informative outputs):
    a frozen VGG16 (random init, no BatchNorm) at 32 px on three colours, 12 images each."""
    root = tmp_path_factory.mktemp("export-run")
    data = write_folder(root / "data", per_class=12)
    out = root / "run"
    train(
        TrainConfig(
            data_dir=data, out=out, base="vgg16", weights="none", image_size=32, epochs=12, lr=2e-2,
            batch_size=8, augment=False, val_split=0.25,
        )
    )  # fmt: skip
    assert rundir.read_run(out)["metrics"]["accuracy"] >= 0.8
    return out


@pytest.fixture(scope="session")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    repository = tmp_path_factory.mktemp("repo")
    return export(ExportOptions(run_dir=run_dir, repository=repository, name="colors", fp16=True, int8=True))
