"""TensorFlow's C++ log lines, kept off a user's terminal.

TensorFlow writes its start-up chatter (absl's "All log messages before absl::InitializeLog()",
oneDNN and CUDA banners, "failed call to cuInit", NodeDef attribute errors) to file descriptor 2
from C++, before Python's logging exists and whatever ``TF_CPP_MIN_LOG_LEVEL`` says. ``quiet()``
points fd 2 at a pipe read by a small filter process that drops the lines in those formats and
passes every other byte through to the real stderr unchanged. A process rather than a thread: it
reads the pipe to its end however its writer stops, so what a crashing process wrote last (a
traceback, a fatal ``F`` line, a signal message) still arrives.

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

_TF_LINE = re.compile(
    rb"(?:"
    # absl/glog: I0000 00:00:1796173263.242188   16665 port.cc:153] oneDNN custom operations are on...
    # NOTE: F (fatal) lines are not dropped: they come just before an abort, and say why
    rb"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-/]+:\d+\] "
    # TensorFlow before absl: 2024-05-01 12:00:00.000000: I tensorflow/core/util/port.cc:113] ...
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [\w.\-/]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    # the second line of cpu_feature_guard's "This TensorFlow binary is optimized to use ..."
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
    rb"|TF-TRT Warning: "
    rb")"
)


def is_tf_noise(line: bytes) -> bool:
    """Whether ``line`` (without its newline) is one of TensorFlow's C++ log lines."""
    return _TF_LINE.match(line) is not None


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
    (a prompt, a progress line) unless its start already looks like TensorFlow's, and the rest of a
    line passed on in part is passed on as it comes.
    """
    pending = b""
    passing = False  # the current line has been judged not TensorFlow's and partly written
    while True:
        hold = pending and not passing and not is_tf_noise(pending)
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
    lines are wanted. Call it before TensorFlow is imported; calling it again does nothing."""
    global _filter, _saved_fd
    if _filter is not None or wanted() or os.name != "posix":  # NOTE: select() on pipes is POSIX's
        return
    sys.stderr.flush()
    read, write = os.pipe()
    try:
        # NOTE: a session of its own, so Ctrl-C at the terminal does not stop the filter before the
        # process it filters has said "interrupted"; it ends when the pipe does.
        _filter = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=read, stdout=2, stderr=2, start_new_session=True,
        )  # fmt: skip
    except OSError:  # no filter is better than no command
        os.close(write)
        return
    finally:
        os.close(read)
    _saved_fd = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    atexit.register(_restore)


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
    try:
        pass_through(sys.stdin.fileno(), sys.stdout.fileno())
    except OSError:  # the real stderr is gone: read on, so that the writer neither blocks nor fails
        while os.read(sys.stdin.fileno(), 1 << 16):
            pass
