"""TensorFlow's C++ log lines are kept off stderr; every other byte arrives, in order, even on a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import write_folder
from tlserve import tfnoise

# Lines TensorFlow 2.21 printed here before tlserve's own error (tlserve train DIR --val-split 0)
TF_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796173263.242188   16665 port.cc:153] oneDNN custom operations are on. You may see "
    b"slightly different numerical results due to floating-point round-off errors from different "
    b"computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    b"I0000 00:00:1796173263.242599   16665 cudart_stub.cc:31] Could not find cuda drivers on your "
    b"machine, GPU will not be used.",
    b"I0000 00:00:1796173263.289544   16665 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
    b"to use available CPU instructions in performance-critical operations.",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    b"operations, rebuild TensorFlow with the appropriate compiler flags.",
    b"E0000 00:00:1796173275.723764   16686 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    b"error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"W0000 00:00:1733160000.000000    1234 op_level_cost_estimator.cc:699] Error in PredictCost() for "
    b'the op: op: "CropAndResize"',
    b"E0000 00:00:1733160000.000000    1234 meta_optimizer.cc:966] model_pruner failed",
    b"E1203 10:00:00.123456   42 node_def_util.cc:680] NodeDef mentions attribute "
    b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; ...>",
    b"2024-05-01 12:00:00.000000: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.",
    b"2024-05-01 12:00:00.000000: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT "
    b"Warning: Could not find TensorRT",
    b"2024-05-01 12:00:00.000000: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261] Unable "
    b"to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already "
    b"been registered",
    b"E0000 00:00:1733160000.000000    1234 computation_placer.cc:177] computation placer already "
    b"registered. Please check linkage and avoid linking the same target more than once.",
    b"W0000 00:00:1733160000.000000    1234 local_rendezvous.cc:405] Local rendezvous is aborting with "
    b"status: OUT_OF_RANGE: End of sequence",
    b"2024-05-01 12:00:00.000000: E tensorflow/compiler/xla/stream_executor/cuda/cuda_driver.cc:268] "
    b"failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected",
    b"I0000 00:00:1733160000.000000    1234 any_file.cc:1] any I line",
]
KEPT_LINES = [
    b"tlserve train: error: --val-split must be between 0 and 1 (exclusive); got 0.0",
    b"Traceback (most recent call last):",
    b'  File "/x/tlserve/cli.py", line 1, in <module>',
    b"KeyError: 'I0000'",
    b"WARNING: weak model published because of --allow-weak: val accuracy 0.333",
    # a fatal line comes just before an abort and says why: never dropped
    b"F0000 00:00:1796173275.723764   16686 tensor.cc:10] Check failed: dtype() == expected",
    b"Fatal Python error: Segmentation fault",
    b"I0000 is not a timestamp",
    b"",
    # W and E lines that are not known noise may say why a command failed
    b"E0000 00:00:1796173275.723764   16686 cuda_dnn.cc:535] Could not create cudnn handle: "
    b"CUDNN_STATUS_INTERNAL_ERROR",
    b"W0000 00:00:1796173275.723764   16686 op_kernel.cc:1840] OP_REQUIRES failed at "
    b"strided_slice_op.cc:117 : INVALID_ARGUMENT: slice index 3 of dimension 0 out of bounds.",
    b"2024-05-01 12:00:00.000000: E tensorflow/core/common_runtime/gpu/gpu_device.cc:2020] Loaded "
    b"runtime CuDNN library: 8.1.0 but source was compiled with: 8.6.0.",
    b"E0000 00:00:1796173275.723764   16686 cuda_executor.cc:1] failed call to cuDevicePrimaryCtxRetain",
]


@pytest.mark.parametrize("line", TF_LINES)
def test_tensorflow_lines_are_recognised(line: bytes) -> None:
    assert tfnoise.is_tf_noise(line)


@pytest.mark.parametrize("line", KEPT_LINES)
def test_other_lines_are_kept(line: bytes) -> None:
    assert not tfnoise.is_tf_noise(line)


@pytest.mark.parametrize("line", TF_LINES[1:3] + TF_LINES[5:12] + KEPT_LINES[-4:])
def test_the_start_of_a_tensorflow_line_waits_for_its_end(line: bytes) -> None:
    header = line.index(b"] ") + 2
    assert all(tfnoise.may_be_tf_noise(line[:end]) for end in range(1, header))
    assert tfnoise.may_be_tf_noise(line[:header]) and tfnoise.may_be_tf_noise(line[: header + 3])


@pytest.mark.parametrize("line", [*KEPT_LINES[:-5], b"2/10 [====>", b"E: no such file", b"Info"])
def test_the_start_of_another_line_does_not_wait(line: bytes) -> None:
    assert not tfnoise.may_be_tf_noise(line)


def test_pass_through_drops_only_tensorflow_lines_and_keeps_partial_lines_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NOTE: with no hold at all, only may_be_tf_noise keeps a TensorFlow line split across writes
    # whole, whenever the filter happens to read the parts: the outcome does not depend on timing
    monkeypatch.setattr(tfnoise, "HOLD_S", 0.0)
    source_r, source_w = os.pipe()
    sink_r, sink_w = os.pipe()
    worker = threading.Thread(target=tfnoise.pass_through, args=(source_r, sink_w))
    worker.start()
    mixed = [TF_LINES[0], KEPT_LINES[0], TF_LINES[1], KEPT_LINES[1], KEPT_LINES[2], TF_LINES[3]]
    mixed += [TF_LINES[4], KEPT_LINES[3], KEPT_LINES[5]]
    os.write(source_w, b"".join(line + b"\n" for line in mixed))
    # an absl line split across writes, in its header and in its message
    os.write(source_w, TF_LINES[5][:20])
    time.sleep(0.01)
    os.write(source_w, TF_LINES[5][20:80])
    time.sleep(0.01)
    os.write(source_w, TF_LINES[5][80:] + b"\n" + b"half a line, ")
    expected = b"".join(line + b"\n" for line in mixed if not tfnoise.is_tf_noise(line))
    expected += b"half a line, "
    received = b""
    deadline = time.monotonic() + 10
    while received != expected and time.monotonic() < deadline:  # a partial line is not held back
        received += os.read(sink_r, 1 << 16)
    assert received == expected
    os.write(source_w, b"the rest\n" + TF_LINES[2] + b"\nno newline at the end")
    os.close(source_w)
    worker.join(timeout=10)
    os.close(sink_w)
    rest = b""
    while chunk := os.read(sink_r, 1 << 16):
        rest += chunk
    os.close(sink_r)
    os.close(source_r)
    assert rest == b"the rest\nno newline at the end"


def test_drop_tf_lines_of_a_captured_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join(line.decode() for line in [TF_LINES[0], KEPT_LINES[1], TF_LINES[6], KEPT_LINES[3]])
    assert tfnoise.drop_tf_lines(text + "\n") == f"{KEPT_LINES[1].decode()}\n{KEPT_LINES[3].decode()}\n"
    monkeypatch.setenv(tfnoise.ENV, "1")
    assert tfnoise.drop_tf_lines(text) == text


def tlserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TLSERVE_", "TF_CPP_"))}
    command = [sys.executable, "-m", "tlserve", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**environment, **(env or {})},
                          timeout=300, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "/nonexistent", "--out", "X"], "tlserve train: error: data dir /nonexistent does not"),
        (["train", "/nonexistent", "--out", "X", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "/nonexistent", "--mode", "x"], "argument --mode: invalid choice: 'x'"),
        (["export", "--help-me"], "see tlserve export --help"),
        (["--verbose", "train", "/nonexistent", "--out", "X"], "--verbose goes after the command"),
        ([], "tlserve: error: the following arguments are required: COMMAND"),
    ],
)
def test_a_usage_error_is_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = tlserve(*args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_usage_error_after_tensorflow_is_loaded_is_one_line(tmp_path: Path) -> None:
    """A weights file that is not one is refused when the base is built, after TensorFlow has
    started and printed its banners (cuInit, oneDNN, absl): the user sees tlserve's line only,
    unless --verbose."""
    data = write_folder(tmp_path / "data", per_class=2)
    (tmp_path / "w.weights.h5").write_bytes(b"not an HDF5 file\n")
    argv = ["train", str(data), "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "w.weights.h5")]
    quiet = tlserve(*argv)
    assert quiet.returncode == 2
    assert len(quiet.stderr.splitlines()) == 1, quiet.stderr
    assert quiet.stderr.startswith("tlserve train: error:") and "does not fit base" in quiet.stderr
    verbose = tlserve(*argv, "--verbose")  # as TLSERVE_TF_LOGS=1 (test_filtered_stderr_arrives_...)
    assert verbose.returncode == 2
    lines = verbose.stderr.encode().splitlines()
    assert any(tfnoise.is_tf_noise(line) for line in lines), verbose.stderr  # TensorFlow's, shown
    assert lines[-1].decode() == quiet.stderr.rstrip("\n")


PROGRAM = textwrap.dedent(
    """
    import os, signal, sys
    from tlserve import tfnoise
    tfnoise.quiet()
    os.write(2, b"I0000 00:00:1796173263.242188   16665 port.cc:153] oneDNN custom operations are on\\n")
    print("tlserve: first", file=sys.stderr)
    import subprocess
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'E0000 00:00:1.5 7 x.cc:1] "
                    "model_pruner failed\\\\nchild says hi\\\\n')"], check=True)
    print("tlserve: last", file=sys.stderr)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit("tlserve: bye")
    """
)


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_filtered_stderr_arrives_whole_and_in_order(ending: str) -> None:
    """C-level writes to fd 2 are filtered, in this process and its children; Python's own output
    arrives in order, even when the process is killed before it could flush anything."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TLSERVE_")}
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", PROGRAM, ending], capture_output=True, text=True, timeout=60,
        env={**environment, **env}, check=False,
    )  # fmt: skip
    quiet = run({})
    ours = ["tlserve: first", "child says hi", "tlserve: last", "tlserve: bye"]
    ours = ours if ending == "exit" else ours[:3]
    assert quiet.stderr.splitlines() == ours
    assert quiet.returncode == (1 if ending == "exit" else -9)
    shown = run({tfnoise.ENV: "1"}).stderr.splitlines()
    assert shown[0].startswith("I0000 00:00:") and "E0000 00:00:1.5 7 x.cc:1] model_pruner failed" in shown


FALLBACK = textwrap.dedent(
    """
    import os, sys
    from tlserve import tfnoise
    if sys.argv[1] == "no-stderr":
        sys.stderr = None
    else:
        sys.executable = sys.argv[1]  # an interpreter that cannot run the filter
    tfnoise.quiet()
    print(tfnoise._filter is None, flush=True)
    os.write(2, b"I0000 00:00:1796173263.242188   16665 port.cc:153] oneDNN custom operations are on\\n")
    if sys.stderr is not None:
        print("tlserve: still here", file=sys.stderr)
    """
)


@pytest.mark.parametrize("case", ["no-stderr", "/bin/false", "/nonexistent/python"])
def test_without_a_filter_stderr_stays_as_it_was(case: str) -> None:
    """quiet() with no sys.stderr, or whose filter cannot start, leaves fd 2 alone and the command runs."""
    if case == "/bin/false" and not Path(case).exists():
        pytest.skip("no /bin/false")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TLSERVE_")}
    result = subprocess.run([sys.executable, "-c", FALLBACK, case], capture_output=True, text=True,
                            timeout=60, env=environment, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"
    shown = result.stderr.splitlines()
    assert shown[0].startswith("I0000 00:00:")  # unfiltered
    assert shown[1:] == ([] if case == "no-stderr" else ["tlserve: still here"])
