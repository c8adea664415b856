"""Bearer-token authentication, shared by the gRPC interceptor and the REST middleware.

Tokens come from ``auth_tokens`` (settings, e.g. ``TLSERVE_AUTH_TOKENS``) and ``auth_tokens_file``
(one per line; ``#`` comments and blank lines ignored). The file is re-read when its modification
time or size changes (checked at most once a second), so rotating a mounted Kubernetes Secret needs
no restart. A readable file is the truth: its valid tokens replace the previous ones, even when
there are none (every call is then refused, and an error is logged for each invalid line); only a
file that cannot be read (missing for a moment during a rotation) keeps the previous tokens.

A call is let in when its ``authorization`` header is ``Bearer TOKEN`` for one of the tokens. Every
configured token is compared with ``hmac.compare_digest`` (constant time, no early exit), so the
time taken says nothing about how much of a token matched or which one. Health checks are exempt:
Kubernetes probes and load balancers send no credentials.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from tlserve.service.errors import Unauthenticated
from tlserve.service.settings import ServerSettings

log = logging.getLogger(__name__)
HEADER = "authorization"
SCHEME = "bearer "
RECHECK_S = 1.0
MESSAGE = "missing or invalid bearer token (send the header 'authorization: Bearer TOKEN')"


def read_tokens(path: Path) -> list[str]:
    """The tokens in a file; ValueError says why there are none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ValueError(f"cannot read auth_tokens_file {path}: {reason}") from None
    lines = (line.strip() for line in text.splitlines())
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"auth_tokens_file {path} holds no token (one per line)")
    for token in tokens:
        check_token(token, f"a token in {path}")
    return tokens


def check_token(token: str, where: str) -> None:
    if len(token) < 16:
        raise ValueError(f"{where} is shorter than 16 characters: use a long random token "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")  # fmt: skip
    if not token.isascii() or any(c.isspace() for c in token):
        raise ValueError(f"{where} must be ASCII without spaces")


class Tokens:
    """The accepted tokens; ``check(header)`` raises Unauthenticated unless the header carries one."""

    def __init__(self, tokens: Iterable[str] = (), path: Path | None = None) -> None:
        self._static = [t.encode() for t in tokens]
        for token in tokens:
            check_token(token, "a token in auth_tokens")
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[bytes] = []
        self._checked = 0.0
        self._lock = threading.Lock()
        if path is not None:
            self._from_file = [t.encode() for t in read_tokens(path)]
            self._stamp = self._file_stamp()
        if not self._static and not self._from_file:
            raise ValueError("no bearer token configured")

    @property
    def count(self) -> int:
        return len(self._static) + len(self._from_file)

    def _file_stamp(self) -> tuple[int, int] | None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < RECHECK_S:
            return
        with self._lock:
            if now - self._checked < RECHECK_S:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                text = self._path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.error("cannot read auth_tokens_file %s (%s); keeping the %d token(s) read before",
                          self._path, exc, len(self._from_file))  # fmt: skip
                return
            tokens = []
            for line in text.splitlines():
                token = line.strip()
                if not token or token.startswith("#"):
                    continue
                try:
                    check_token(token, f"a token in {self._path}")
                except ValueError as exc:
                    log.error("%s: refused, not used", exc)
                    continue
                tokens.append(token.encode())
            self._from_file = tokens
            if not tokens and not self._static:
                log.error("auth_tokens_file %s now holds no valid token: every call is refused", self._path)
            log.info("auth: re-read %s: %d token(s)", self._path, len(tokens))

    def check(self, header: str | bytes | None) -> None:
        self._refresh()
        if isinstance(header, str):
            header = header.encode("utf-8", "replace")
        given = b""
        if header and header[: len(SCHEME)].lower() == SCHEME.encode():
            given = header[len(SCHEME) :].strip()
        ok = False
        for token in self._static + self._from_file:  # NOTE: all of them, no early exit
            ok |= hmac.compare_digest(given, token)
        if not ok or not given:
            raise Unauthenticated(MESSAGE)


def auth_tokens(settings: ServerSettings) -> Tokens | None:
    """The accepted bearer tokens, or None when authentication is off. ValueError when misconfigured."""
    if not settings.auth_tokens and settings.auth_tokens_file is None:
        return None
    return Tokens([t.get_secret_value() for t in settings.auth_tokens], settings.auth_tokens_file)
