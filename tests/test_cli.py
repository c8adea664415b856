"""The command line as a user meets it: help, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from tests.conftest import write_folder
from tlserve.cli import main
from tlserve.errors import ExportError, TlserveError, UsageError

TINY = ["--mode", "scratch", "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8"]
TINY += ["--no-augment"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SPLIT_RANGE = "--val-split must be between 0 and 1, both excluded"


def assert_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("tlserve")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "export", "bases", "demo"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "bases", "demo"])
def test_subcommand_help_shows_defaults(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "usage: tlserve " + command in out
    if command == "train":
        assert "(default: frozen)" in out and "--unfreeze" in out
        assert "1e-5 for ImageNet weights, 0.3 of the rate an earlier network" in out
        assert "(default: rotate,zoom,translate)" in out and "(default: auto)" in out
    if command == "export":
        assert out.count("(default: savedmodel,onnx)") == 1 and "('savedmodel'" not in out
        assert "--allow-duplicate" in out


def test_train_and_export_parse_where_the_server_is_not_installed() -> None:
    # NOTE: the train image has no server packages: its `tlserve train` crashed importing pydantic
    # for serve's flags (found by deploy/images.py)
    code = (
        "import sys; sys.modules['pydantic'] = None\n"  # what an uninstalled package looks like
        "from tlserve.cli import main\n"
        "assert main(['export', '--help']) == 0\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # argparse's --help exits 0 after printing
    assert done.stdout.startswith("usage: tlserve export")
    code = (
        "import sys; sys.modules['pydantic'] = None\n"
        "from tlserve.cli import main\n"
        "sys.exit(main(['serve', '--repository', 'models']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("tlserve serve: error: tlserve serve needs the server's packages")
    assert "pip install 'tlserve[serve]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--verbose", "--overwrite", "--out=X"])
def test_an_option_before_its_command_is_said_to_go_after_it(
    capsys: pytest.CaptureFixture[str], option: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([option, "train", "/nonexistent", "--out", "X"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"tlserve train: error: {option} goes after the command: tlserve train ... {option} " \
                  "(see tlserve train --help)\n"  # fmt: skip


def test_verbose_holds_for_its_command_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlserve import tfnoise
    from tlserve.cli import train

    seen: list[str | None] = []
    monkeypatch.setattr(train, "run", lambda args: seen.append(os.environ.get(tfnoise.ENV)) or 0)
    argv = ["train", "/nonexistent", "--out", "X", "--verbose"]
    assert main(argv) == 0 and seen == ["1"] and tfnoise.ENV not in os.environ
    monkeypatch.setenv(tfnoise.ENV, "0")
    assert main(argv) == 0 and seen == ["1", "1"] and os.environ[tfnoise.ENV] == "0"


@pytest.mark.parametrize(
    ("error", "code", "prefix"),
    [
        (UsageError("--name: not allowed"), 2, "tlserve bases: error: "),
        (ExportError("ONNX fp32 parity failed"), 3, "tlserve bases: failed: "),
        (TlserveError("the server exited with code 1"), 1, "tlserve bases: failed: "),
    ],
)
def test_each_error_has_its_exit_code(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    code: int,
    prefix: str,
) -> None:
    from tlserve.cli import bases

    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(bases, "run", fail)
    assert run_cli(capsys, "bases") == (code, "", f"{prefix}{error}\n")


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from tlserve import cli

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    codes = [cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_EXPORT_FAILED, cli.EXIT_INTERRUPTED]
    for code in codes:
        assert f"\n  {code} " in out.split("exit codes:")[1]
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 published; 2 a bad request, refused before any work; 3 the export failed" in out


def test_bases_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "bases")
    assert code == 0
    assert "nasnet_large" in out and "331" in out and "caffe" in out


def test_bad_inputs_exit_2_with_one_line_and_no_run_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path
) -> None:
    out = tmp_path / "run"
    data = str(image_folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    single = write_folder(tmp_path / "single", classes={"one": (1, 2, 3)})
    unreadable = write_folder(tmp_path / "unreadable")
    (unreadable / "blue").joinpath("x.jpg").write_bytes(b"junk")
    for p in list((unreadable / "blue").iterdir()):
        if p.name != "x.jpg":
            p.unlink()
    incomplete = tmp_path / "old_run"
    incomplete.mkdir()
    (incomplete / "labels.txt").write_text("a\nb\n")
    cases = [
        ([str(tmp_path / "missing"), "--out", str(out)], ["does not exist"]),
        ([str(empty), "--out", str(out)], ["no class folders"]),
        ([str(single), "--out", str(out)], ["single class"]),
        ([str(unreadable), "--out", str(out)], ["no readable image", "blue"]),
        (
            [data, "--out", str(out), "--base", "mobilenet_v2", "--image-size", "16"],
            ["below the minimum", "32"],
        ),
        ([data, "--out", str(out), "--base", "resnet9000"], ["unknown base", "valid bases", "nasnet_large"]),
        ([data, "--out", str(out), "--base", str(incomplete)], ["incomplete", "model.keras", "run.json"]),
        ([data, "--out", str(out), "--weights", str(tmp_path / "nope.h5")], ["--weights", "imagenet, none"]),
        # the same message for both ends (0 once passed the first check and failed the second)
        ([data, "--out", str(out), "--val-split", "0"], [SPLIT_RANGE]),
        ([data, "--out", str(out), "--val-split", "1.5"], [SPLIT_RANGE]),
        ([data, "--out", str(out), "--epochs", "0"], ["--epochs"]),
    ]
    for argv, fragments in cases:
        assert_usage_error(capsys, ["train", *argv], *fragments)
        assert not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--seed", "-1"], ["--seed must be at least 0", "-1"]),
        (["--seed", str(2**32)], ["--seed must be below 2**32"]),
        (["--image-size", "0"], ["--image-size", "got 0"]),
        (["--bn-momentum", "1.5"], ["--bn-momentum must be in [0, 1)", "1.5"]),
        (["--lr", "nan"], ["--lr must be a positive number", "nan"]),
        (["--cache-memory-mb", "-5"], ["--cache-memory-mb must be at least 0"]),
    ],
)
def test_option_values_are_checked(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    image_folder: Path,
    extra: list[str],
    fragments: list[str],
) -> None:
    out = tmp_path / "run"
    assert_usage_error(capsys, ["train", str(image_folder), "--out", str(out), *extra], *fragments)
    assert not out.exists()


def test_out_may_not_replace_an_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in image_folder.rglob("*"))
    argv = ["train", str(image_folder), "--overwrite", *TINY]
    assert_usage_error(capsys, [*argv, "--out", str(image_folder)], "would replace DATA_DIR")
    assert_usage_error(capsys, [*argv, "--out", str(tmp_path)], "would replace DATA_DIR")
    monkeypatch.chdir(image_folder / "red")
    assert_usage_error(capsys, [*argv, "--out", "."], "would replace")
    assert sorted(p.name for p in image_folder.rglob("*")) == before


def test_an_earlier_network_with_the_wrong_input_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path
) -> None:
    import keras

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(pooled)).save(tmp_path / "dynamic.keras")
    argv = [
        "train",
        str(image_folder),
        "--out",
        str(tmp_path / "run"),
        "--base",
        str(tmp_path / "dynamic.keras"),
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and "square RGB images" in err
    assert "data:" not in out  # refused before scanning the data


def test_val_split_is_not_checked_when_val_data_is_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path
) -> None:
    # --val-split 0 next to --val-data means "no split"; it must not be refused
    out = tmp_path / "r"
    argv = [str(image_folder), "--val-data", str(image_folder), "--val-split", "0", "--out", str(out)]
    code, _, err = run_cli(capsys, "train", *argv, *TINY)
    assert code == 0, err
    assert (out / "run.json").is_file()


def test_demo_refuses_a_workdir_it_did_not_make(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    assert_usage_error(capsys, ["demo", "--workdir", str(tmp_path)], "not made by tlserve demo")
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("per_class", ["0", "61"])
def test_demo_refuses_a_per_class_it_cannot_draw(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, per_class: str
) -> None:
    # 60 validation + 61 training images of a target class would leave the source classes' pools
    # (the same ranges are skipped there) under 54 of the smallest class's 174 handwritten digits
    argv = ["demo", "--workdir", str(tmp_path / "demo"), "--per-class", per_class]
    assert_usage_error(capsys, argv, f"--per-class takes numbers from 1 to 60; got [{per_class}]")
    assert not (tmp_path / "demo").exists()


def test_non_empty_out_is_refused_unless_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_usage_error(
        capsys, ["train", str(image_folder), "--out", str(out), *TINY], "not empty", "--overwrite"
    )
    assert (out / "keep.txt").read_text() == "precious"
    monkeypatch.chdir(tmp_path)  # relative paths on the command line, absolute ones in run.json
    code, stdout, err = run_cli(capsys, "train", "data", "--out", "run", "--overwrite", *TINY)
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.keras").is_file()
    assert "val accuracy" in stdout
    assert json.loads((out / "run.json").read_text())["dataset"]["data_dir"] == str(image_folder.resolve())
    assert leftovers(tmp_path) == []


def test_imagenet_weights_offline_gives_a_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras.src.utils.file_utils as file_utils

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    # an empty Keras cache, so a weights file downloaded earlier on this machine cannot hide the path
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path / "keras_home"))
    out = tmp_path / "run"
    argv = ["train", str(image_folder), "--out", str(out), "--base", "mobilenet", "--weights", "imagenet"]
    argv += ["--image-size", "128", "--epochs", "1"]
    assert_usage_error(
        capsys,
        argv,
        "could not download",
        "--weights PATH",
        "--base RUN_DIR",
        "--mode scratch --weights none",
    )
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_a_frozen_random_base_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path, mode: str
) -> None:
    out = tmp_path / "run"
    argv = ["train", str(image_folder), "--out", str(out), "--weights", "none", "--mode", mode]
    assert_usage_error(capsys, argv, f"--mode {mode} with --weights none", "--mode scratch", "--base RUN_DIR")
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_augmentation_names_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--augment", "flip,shear"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "argument --augment: 'flip,shear': expected none, default, or a comma-separated list of flip" in err
    )


def test_finetune_flags_in_another_mode_get_a_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("refused after the notes, before any work")
    argv = ["train", str(image_folder), "--out", str(out), "--unfreeze", "40", "--fine-tune-lr", "1e-4"]
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 2
    assert stdout.splitlines() == [
        "note: --unfreeze is ignored in --mode frozen (it applies to --mode finetune)",
        "note: --fine-tune-lr is ignored in --mode frozen (it applies to --mode finetune)",
    ]


def test_weights_file_that_does_not_fit_the_base(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path
) -> None:
    import keras

    weights = tmp_path / "mobilenet_v2_no_top.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        weights
    )
    out = tmp_path / "run"
    common = [str(image_folder), "--out", str(out), "--image-size", "32", "--epochs", "1", "--no-augment"]
    assert_usage_error(
        capsys,
        ["train", *common, "--base", "mobilenet", "--weights", str(weights)],
        "does not fit",
        "mobilenet",
        "must match.",  # Keras's reason, not its first line alone ("... for object <Conv2D ...>:")
    )
    assert not out.exists()
    code, _, err = run_cli(capsys, "train", *common, "--base", "mobilenet_v2", "--weights", str(weights))
    assert code == 0, err


def test_evaluate_prints_and_saves_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_folder: Path
) -> None:
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", str(image_folder), "--out", str(run_dir), *TINY)[0] == 0
    other = write_folder(
        tmp_path / "other", per_class=3, seed=5, classes={"red": (210, 30, 30), "blue": (40, 40, 220)}
    )
    (other / "red" / "bad.png").write_bytes(b"\x89PNG broken")
    code, out, err = run_cli(capsys, "evaluate", str(run_dir), str(other))
    assert code == 0, err
    assert "precision" in out and "accuracy" in out
    import json

    saved = json.loads((run_dir / "evaluations" / "other" / "evaluation.json").read_text())
    assert saved["images"] == 6 and len(saved["corrupt_files"]) == 1
    assert saved["metrics"]["per_class"]["green"]["support"] == 0
    assert (run_dir / "evaluations" / "other" / "confusion.png").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    assert_usage_error(capsys, ["evaluate", str(run_dir), str(other), "--out", str(mine)], "not empty")
    assert (mine / "keep.txt").read_text() == "keep"
    assert run_cli(capsys, "evaluate", str(run_dir), str(other), "--out", str(mine), "--overwrite")[0] == 0
    assert sorted(p.name for p in mine.iterdir()) == ["confusion.png", "evaluation.json"]
    assert_usage_error(
        capsys,
        ["evaluate", str(run_dir), str(other), "--out", str(run_dir), "--overwrite"],
        "would replace RUN_DIR",
    )
    assert (run_dir / "model.keras").is_file()
    unknown = write_folder(
        tmp_path / "unknown", per_class=2, classes={"purple": (90, 0, 90), "red": (200, 0, 0)}
    )
    assert_usage_error(capsys, ["evaluate", str(run_dir), str(unknown)], "does not know: purple")
    assert_usage_error(capsys, ["evaluate", str(tmp_path / "nope"), str(other)], "does not exist")


def test_ctrl_c_leaves_no_run_dir(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "data", per_class=30)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "tlserve", "train", str(data), "--out", str(out), *TINY]
    argv[argv.index("--epochs") + 1] = "500"
    argv += ["--mode", "scratch", "--patience", "500"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # NOTE: SIGINT back to its default in the child: a runner started in the background by a
    # non-interactive shell ignores SIGINT, Python then keeps ignoring it, and Ctrl-C would be lost
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if "epoch 2/500" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; nothing was written" in err
    assert not out.exists()
    assert leftovers(tmp_path) == []
