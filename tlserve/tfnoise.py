"""TensorFlow's C++ log lines, kept off a user's terminal.

TensorFlow writes its start-up chatter (absl's "All log messages before absl::InitializeLog()",
oneDNN and CUDA banners, "failed call to cuInit", NodeDef attribute errors) to file descriptor 2
from C++, before Python's logging exists and whatever ``TF_CPP_MIN_LOG_LEVEL`` says. ``quiet()``
points fd 2 at a pipe read by a small filter process that drops TensorFlow's I lines and the W and
E lines it prints when nothing is wrong, and passes every other byte through to the real stderr
unchanged: a W or E line that is not known noise (a cuDNN or CUDA failure, ``OP_REQUIRES failed``)
may say why a command failed. A process rather than a thread: it reads the pipe to its end however
its writer stops, so what a crashing process wrote last (a traceback, a fatal ``F`` line, a signal
message) still arrives.

``TLSERVE_TF_LOGS=1`` (what ``--verbose`` sets) keeps TensorFlow's lines. This module imports only
the standard library: the filter process runs it as a script, with ``-I -S``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import select
import subprocess
import sys

ENV = "TLSERVE_TF_LOGS"
HOLD_S = 0.05
"""How long a line without its newline waits for the rest before it is passed on."""
READY_S = 5.0
"""How long ``quiet()`` waits for the filter process to start before it does without one."""

# The two formats of TensorFlow's C++ log lines, as the text before and after the level letter
_HEADERS = [
    # absl/glog: I0000 00:00:1796173263.242188   16665 port.cc:153] oneDNN custom operations are on...
    (rb"", rb"\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-/]+:\d+\] "),
    # TensorFlow before absl: 2024-05-01 12:00:00.000000: I tensorflow/core/util/port.cc:113] ...
    (rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ", rb" [\w.\-/]+:\d+\] "),
]
# NOTE: F (fatal) lines are never dropped: they come just before an abort, and say why
_LEVEL = rb"[IWE]"
_TF_HEADER = [re.compile(before + b"(?P<level>" + _LEVEL + b")" + after) for before, after in _HEADERS]

# What TensorFlow says at W and E on a machine where nothing is wrong. I lines are all dropped;
# any other W or E line may explain a failure (cuDNN or CUDA init, OP_REQUIRES failed) and is kept.
_KNOWN_NOISE = re.compile(
    rb"failed call to cuInit"  # no GPU, or no driver for it: TensorFlow runs on the CPU
    rb"|Could not find cuda drivers on your machine"
    rb"|NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition"
    rb"|model_pruner failed"  # grappler skips one optimisation of the graph
    rb"|Error in PredictCost\(\) for the op"
    rb"|TF-TRT Warning: "
    rb"|oneDNN custom operations are on"
    rb"|This TensorFlow binary is optimized to use available CPU instructions"
    rb"|Unable to register cu(?:DNN|FFT|BLAS) factory: Attempting to register factory for plugin"
    rb"|computation placer already registered"
    rb"|Local rendezvous is aborting with status: OUT_OF_RANGE: End of sequence"  # a dataset's end
)

# TensorFlow's lines in neither format
_OTHER_LINES = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    # the second line of cpu_feature_guard's "This TensorFlow binary is optimized to use ..."
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
    rb"|TF-TRT Warning: "
)


def _starts(pattern: bytes) -> bytes:
    """A pattern whose full matches are the starts, complete or not, of what ``pattern`` matches,
    followed by anything: ``pattern`` is a sequence of atoms (a character, an escape or a class),
    each with no quantifier, ``{n}`` or ``+``."""
    atoms = re.findall(rb"(\[(?:\\.|[^\]\\])*\]|\\.|.)(\{\d+\}|\+)?", pattern)
    start = b".*"  # past a whole header, the message
    for atom, count in reversed(atoms):
        least = int(count[1:-1]) if count.startswith(b"{") else 1
        part = b"%s{0,%d}" % (atom, least - 1) if least > 1 else b""
        start = b"(?:%s%s%s|%s)" % (atom, count, start, part)
    return start


_TF_START = re.compile(b"|".join(_starts(before + _LEVEL + after) for before, after in _HEADERS))


def is_tf_noise(line: bytes) -> bool:
    """Whether ``line`` (without its newline) is one of TensorFlow's C++ log lines that say nothing
    to a user: any I line, and the W and E lines that TensorFlow prints when nothing is wrong."""
    for header in _TF_HEADER:
        if found := header.match(line):
            return found["level"] == b"I" or _KNOWN_NOISE.search(line, found.end()) is not None
    return _OTHER_LINES.match(line) is not None


def may_be_tf_noise(line: bytes) -> bool:
    """Whether ``line``, the start of a line still without its newline, may end as one of
    TensorFlow's lines that ``is_tf_noise`` drops: it is one, or a TensorFlow header, whole or in part."""
    return is_tf_noise(line) or _TF_START.fullmatch(line) is not None


def wanted() -> bool:
    """Whether the user asked to see TensorFlow's own log lines (``TLSERVE_TF_LOGS=1``)."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def drop_tf_lines(text: str) -> str:
    """``text`` without TensorFlow's C++ log lines, unless they are wanted (a child's captured stderr)."""
    if wanted():
        return text
    return "".join(
        line for line in text.splitlines(keepends=True) if not is_tf_noise(line.rstrip("\r\n").encode())
    )


def pass_through(source: int, sink: int) -> None:
    """Copy ``source`` to ``sink`` until end of file, leaving out TensorFlow's log lines.

    Whole lines are judged. A line still without its newline after ``HOLD_S`` is passed on at once
    (a prompt, a progress line) unless it may still become one of TensorFlow's (``may_be_tf_noise``),
    which waits for its newline; the rest of a line passed on in part is passed on as it comes.
    """
    pending = b""
    passing = False  # the current line has been judged not TensorFlow's and partly written
    while True:
        hold = pending and not passing and not may_be_tf_noise(pending)
        ready, _, _ = select.select([source], [], [], HOLD_S if hold else None)
        if not ready:
            _write(sink, pending)
            pending, passing = b"", True
            continue
        chunk = os.read(source, 1 << 16)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = []
        for line in lines:
            if passing or not is_tf_noise(line):
                out.append(line + b"\n")
            passing = False
        _write(sink, b"".join(out))
        if passing:
            _write(sink, pending)
            pending = b""
    if pending and (passing or not is_tf_noise(pending)):
        _write(sink, pending)


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


_filter: subprocess.Popen[bytes] | None = None
_saved_fd = -1


def quiet() -> None:
    """Filter this process's fd 2 (and what its children inherit) from now on, unless TensorFlow's
    lines are wanted. Call it before TensorFlow is imported; calling it again does nothing. Where no
    filter can run, fd 2 stays as it is."""
    global _filter, _saved_fd
    if _filter is not None or wanted() or os.name != "posix":  # NOTE: select() on pipes is POSIX's
        return
    if sys.stderr is None:  # NOTE: started with fd 2 closed, fd 2 may since be any file opened here
        return
    try:
        sys.stderr.flush()
        os.fstat(2)
    except (OSError, ValueError):  # fd 2 closed since
        return
    read, write = os.pipe()
    ready, started = os.pipe()
    try:
        # NOTE: a session of its own, so Ctrl-C at the terminal does not stop the filter before the
        # process it filters has said "interrupted"; it ends when the pipe does.
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(started)],
            stdin=read, stdout=2, stderr=2, pass_fds=(started,), start_new_session=True,
        )  # fmt: skip
    except OSError:  # no filter is better than no command
        os.close(write)
        os.close(ready)
        return
    finally:
        os.close(read)
        os.close(started)
    if not _running(process, ready):
        os.close(write)
        return
    _filter = process
    _saved_fd = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    atexit.register(_restore)


def _running(process: subprocess.Popen[bytes], ready: int) -> bool:
    """Whether the filter ``process`` says on ``ready``, within ``READY_S``, that it runs; if not, it
    is stopped. NOTE: fd 2 handed to a filter that died starting (an interpreter refusing ``-I -S``)
    would be a pipe nobody reads, and every write to stderr would fail."""
    try:
        if select.select([ready], [], [], READY_S)[0] and os.read(ready, 1):
            return True
    finally:
        os.close(ready)
    process.kill()
    process.wait()
    return False


def _restore() -> None:
    """At exit: hand fd 2 back to the real stderr, so the filter reads its last bytes and ends, and
    wait for it, so that a shell prompt never comes before them."""
    global _filter, _saved_fd
    if _filter is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os.dup2(_saved_fd, 2)
    os.close(_saved_fd)
    with contextlib.suppress(subprocess.TimeoutExpired):  # a child still holds the pipe: no wait
        _filter.wait(timeout=5)
    _filter, _saved_fd = None, -1


if __name__ == "__main__":
    os.write(int(sys.argv[1]), b"!")  # to quiet(): running
    os.close(int(sys.argv[1]))
    try:
        pass_through(sys.stdin.fileno(), sys.stdout.fileno())
    except OSError:  # the real stderr is gone: read on, so that the writer neither blocks nor fails
        while os.read(sys.stdin.fileno(), 1 << 16):
            pass
