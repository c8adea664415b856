"""TLS, mutual TLS and bearer tokens: the settings, the token check itself, and real servers."""

from __future__ import annotations

import hmac
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pydantic
import pytest

from tests.service.certs import Certs, make_certs
from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tlserve.cli import main
from tlserve.service import auth
from tlserve.service.auth import Tokens
from tlserve.service.client import Client, Tls
from tlserve.service.errors import Unauthenticated
from tlserve.service.settings import ServerSettings, load_settings

TOKEN = "first-token-0123456789abcdef"
OTHER = "second-token-0123456789abcdef"


# --- the token check ------------------------------------------------------------------------------
def test_tokens_accept_bearer_in_any_case_and_refuse_the_rest() -> None:
    tokens = Tokens([TOKEN, OTHER])
    for header in (f"Bearer {TOKEN}", f"bearer {OTHER}", f"BEARER {TOKEN}".encode()):
        tokens.check(header)
    for header in (None, "", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                   "Bearer " + "é" * 20):  # fmt: skip
        with pytest.raises(Unauthenticated):
            tokens.check(header)


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    tokens = Tokens([TOKEN, OTHER, "third-token-0123456789abcdef"])
    tokens.check(f"Bearer {TOKEN}")  # matches the first: the others are still compared
    assert len(calls) == 3
    with pytest.raises(Unauthenticated):
        tokens.check("Bearer nope")
    assert len(calls) == 6


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["short"], "shorter than 16"),
        (["has a space in it, long enough"], "without spaces"),
        ([], "no bearer"),
    ],
)
def test_weak_or_missing_tokens_are_refused_at_start(tokens: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tokens(tokens)


def test_token_file_comments_rotation_and_bad_rewrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RECHECK_S", 0.0)
    path = tmp_path / "tokens"
    path.write_text(f"# rotated monthly\n\n{TOKEN}\n")
    tokens = Tokens(path=path)
    tokens.check(f"Bearer {TOKEN}")
    path.write_text(f"{OTHER}\n")  # rotation: the old token stops working, the new one works
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    tokens.check(f"Bearer {OTHER}")
    with pytest.raises(Unauthenticated):
        tokens.check(f"Bearer {TOKEN}")
    path.unlink()  # missing for a moment (a rotation in progress): the last tokens stay
    tokens.check(f"Bearer {OTHER}")
    path.write_text(f"{OTHER}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    tokens.check(f"Bearer {OTHER}")
    path.write_text("short\n# revoked OTHER, replacement too short\n")  # a readable file is the truth:
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 3_000_000))  # the invalid line is not used and
    for header in (f"Bearer {OTHER}", "Bearer short"):  # the revoked token is gone
        with pytest.raises(Unauthenticated):
            tokens.check(header)


def test_an_empty_token_variable_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_AUTH_TOKENS", " , ")
    with pytest.raises(pydantic.ValidationError, match="holds no token"):
        load_settings()


# --- settings -------------------------------------------------------------------------------------
def test_tls_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="set both or neither"):
        ServerSettings(tls_cert_file=tmp_path / "a.crt")
    with pytest.raises(pydantic.ValidationError, match="needs tls_cert_file"):
        ServerSettings(tls_client_ca_file=tmp_path / "ca.crt")


def test_tokens_from_the_environment_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_AUTH_TOKENS", f"{TOKEN}, {OTHER}")
    settings = load_settings()
    assert [t.get_secret_value() for t in settings.auth_tokens] == [TOKEN, OTHER]
    assert TOKEN not in str(settings.public()) and TOKEN not in repr(settings)  # never logged


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("problem", ["missing certificate", "not PEM", "key of another certificate",
                                     "short token file"])  # fmt: skip
def test_bad_security_settings_are_usage_errors(
    tmp_path: Path, certs: Certs, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models").mkdir()
    cert, key = certs.server.cert, certs.server.key
    extra: list[str] = []
    if problem == "missing certificate":
        cert = tmp_path / "nope.crt"
    elif problem == "not PEM":
        cert = tmp_path / "der.crt"
        cert.write_bytes(b"\x30\x82 not pem")
    elif problem == "key of another certificate":
        key = certs.client.key
    else:
        (tmp_path / "tokens").write_text("short\n")
        extra = ["--auth-tokens-file", str(tmp_path / "tokens")]
    code = main(["serve", "--repository", str(tmp_path / "models"), "--grpc-port", "0", "--tls-cert-file",
                 str(cert), "--tls-key-file", str(key), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert {"missing certificate": "No such file", "not PEM": "tls_cert_file", "key of another certificate":
            "tls_key_file", "short token file": "shorter than 16"}[problem] in err  # fmt: skip
    assert "Traceback" not in err


# --- real servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secure(module_repo: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory):
    """mTLS on gRPC and REST, a token file, a plaintext health port."""
    tokens = tmp_path_factory.mktemp("secrets") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tls = Tls.from_files(certs.ca, certs.client.cert, certs.client.key)
    process = ServerProcess(
        module_repo, "--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key),
        "--tls-client-ca-file", str(certs.ca), "--auth-tokens-file", str(tokens), "--health-port", "0",
        tls=tls, token=TOKEN,
    )  # fmt: skip
    with process.client() as client:
        client.wait_ready("colors")
    yield process, tokens
    assert process.stop() == 0, process.log


def test_mtls_and_token_let_the_right_client_in(secure, certs: Certs) -> None:
    server, _ = secure
    with server.client() as client:
        assert client.classify("colors", [encoded("red")]).predictions[0][0].label == "red"
    assert "security: mutual TLS (client certificates required); bearer tokens required" in server.log
    tls = Tls.from_files(certs.ca, certs.client.cert, certs.client.key)
    with Client(server.target, tls=tls) as client:  # right certificate, no token
        with pytest.raises(grpc.RpcError) as error:
            client.classify("colors", [encoded("red")])
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert client.health("colors") == "SERVING"  # health needs no token


def test_the_health_port_is_plaintext_and_answers_health_only(secure) -> None:
    server, _ = secure
    assert server.health_port
    with Client(f"127.0.0.1:{server.health_port}", timeout_s=5) as client:
        assert client.health() == "SERVING"
        with pytest.raises(grpc.RpcError) as error:
            client.classify("colors", [encoded("red")])
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    env = {**os.environ, "TLSERVE_HEALTH_PORT": str(server.health_port)}
    probe = subprocess.run([sys.executable, "-m", "tlserve.service.healthcheck", "--service", "colors"],
                           capture_output=True, text=True, env=env, timeout=30)  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.strip() == "SERVING", probe.stderr


def test_rest_uses_the_same_tls_and_tokens(secure, certs: Certs) -> None:
    server, _ = secure
    url = f"https://127.0.0.1:{server.http_port}"
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(certs.client.cert, certs.client.key)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{url}/v1/models/colors", context=context, timeout=10)
    assert error.value.code == 401 and error.value.headers["WWW-Authenticate"].startswith("Bearer")
    request = urllib.request.Request(f"{url}/v1/models/colors", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert b"AVAILABLE" in response.read()
    with urllib.request.urlopen(f"{url}/v2/health/ready", context=context, timeout=10) as response:
        assert response.status == 200  # health exempt from tokens
    no_cert = ssl.create_default_context(cafile=str(certs.ca))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):  # mTLS: no client certificate
        urllib.request.urlopen(request, context=no_cert, timeout=10).read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext HTTP on the TLS port
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=10).read()


def test_predict_command_connects_with_tls_and_a_token_file(secure, certs: Certs, tmp_path: Path) -> None:
    server, _ = secure
    image = tmp_path / "red.png"
    image.write_bytes(encoded("red"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["predict", str(image), "--model", "colors", "--server", server.target, "--tls-ca", str(certs.ca),
            "--tls-cert", str(certs.client.cert), "--tls-key", str(certs.client.key)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "tlserve", *args, "--token-file", str(token_file)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "red 1.000" in done.stdout
    env = {k: v for k, v in os.environ.items() if k != "TLSERVE_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "tlserve", *args], capture_output=True, text=True,
                             timeout=60, env=env)  # fmt: skip
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused.stderr


def test_bench_measures_a_secured_server(secure, certs: Certs, tmp_path: Path) -> None:
    server, _ = secure
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    tls = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client.cert),
           "--tls-key", str(certs.client.key)]  # fmt: skip
    args = ["bench", "--model", "colors", "--server", server.target, "--api", "native", "--duration", "1",
            "--warmup", "0.2", *tls, "--token-file", str(token_file),
            "--json", str(tmp_path / "b.json")]  # fmt: skip
    assert main(args) == 0
    figures = json.loads((tmp_path / "b.json").read_text())["server"]
    assert figures["requests"] > 0 and figures["errors"] == 0
    assert TOKEN not in (tmp_path / "b.json").read_text()  # settings are recorded, secrets are not
    token_file.write_text("not-the-token-0123456789")  # refused: the first request fails, exit 1
    assert main(args) == 1


def test_a_rotated_token_file_takes_effect_without_a_restart(secure) -> None:
    server, tokens = secure
    tokens.write_text(f"# rotated\n{OTHER}\n")
    deadline = time.monotonic() + 10
    with Client(server.target, tls=server.tls, token=OTHER) as client:
        while True:  # re-read at most once a second
            try:
                client.classify("colors", [encoded("red")])
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "the new token was not accepted within 10 s"
                time.sleep(0.2)
    with server.client() as client, pytest.raises(grpc.RpcError) as error:  # the old token is gone
        client.classify("colors", [encoded("red")])
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    tokens.write_text(f"{TOKEN}\n")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("10.0.0.5", False), ("tlserve.example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    from tlserve.service.tls import is_loopback

    assert is_loopback(host) is loopback


def test_plaintext_without_tokens_on_every_interface_is_a_warning(module_repo: Path) -> None:
    warning = "serving plaintext with no authentication on every interface (0.0.0.0): anyone who can reach"
    for env, warned in [({}, True), ({"TLSERVE_AUTH_TOKENS": TOKEN}, False)]:
        server = ServerProcess(module_repo, "--host", "0.0.0.0", env=env, token=TOKEN if env else None)
        try:
            with server.client() as client:
                client.wait_ready("colors")
            lines = [line for line in server.lines if warning in line]
            assert len(lines) == int(warned), server.log
            if warned:
                assert " WARNING tlserve.service.server: " in lines[0]
                assert "--tls-cert-file" in lines[0] and "--auth-tokens-file" in lines[0]
                assert "bind --host 127.0.0.1" in lines[0]
        finally:
            assert server.stop() == 0, server.log


def test_no_plaintext_warning_on_loopback_or_with_tls(
    secure: tuple[ServerProcess, Path], module_repo: Path
) -> None:
    server, _ = secure  # TLS and tokens
    local = ServerProcess(module_repo)  # 127.0.0.1, plaintext
    try:
        with local.client() as client:
            client.wait_ready("colors")
        for quiet in (server, local):
            assert "security: " in quiet.log and "serving plaintext" not in quiet.log
    finally:
        assert local.stop() == 0, local.log


SECURITY_SETTINGS = [
    "max_message_bytes", "max_metadata_bytes", "max_batch_size", "max_image_bytes", "max_image_pixels",
    "max_request_pixels", "max_jpeg_scans", "max_gif_frames", "allowed_image_formats", "max_queue_size",
    "decode_threads", "shutdown_grace_s",
    "max_connection_age_s", "max_connection_age_grace_s", "keepalive_time_s", "tls_cert_file", "tls_key_file",
    "tls_client_ca_file", "auth_tokens_file", "auth_tokens", "health_port",
]  # fmt: skip


@pytest.mark.parametrize("name", SECURITY_SETTINGS)
def test_security_md_documents_every_protection_and_its_default(name: str) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    assert name in ServerSettings.model_fields
    assert f"`{name}`" in text or f"`--{name.replace('_', '-')}`" in text or name.upper() in text, name
    default = ServerSettings.model_fields[name].get_default(call_default_factory=True)
    if name.startswith("max_") and isinstance(default, int) and not isinstance(default, bool):
        forms = {f"{default:,}", str(default)}
        if default % (1 << 20) == 0:
            forms.add(f"{default >> 20} MiB")
        elif default % (1 << 10) == 0:
            forms.add(f"{default >> 10} KiB")
        assert any(f"| {form} |" in text for form in forms), f"{name}: default ({forms}) not in the table"
