"""The metrics against a real Prometheus: counts, p99, the shipped rules and dashboard queries.

Debian's `prometheus` package (with promtool) is installed if missing. Where that is impossible (not
root, no apt-get) the tests skip with a loud reason; with CI=true they fail instead.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import ServerProcess
from tests.service.images import encoded
from tests.service.test_registry import break_onnx
from tests.service.tiny import publish

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SENT_OK, SENT_NOT_FOUND, SENT_PREDICT = 30, 5, 7


def _install() -> str:
    """Why prometheus could not be installed, or "" when it now is."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "prometheus is not installed and this user cannot apt-get install it (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "-q", "prometheus"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "prometheus"]):  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if command[1] == "install" and result.returncode == 0:
            return ""
    return f"apt-get install prometheus failed: {result.stderr.strip()[-500:]}"


@pytest.fixture(scope="module")
def promtool() -> str:
    reason = _install()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        warnings.warn(f"SKIPPING the Prometheus tests: {reason}", stacklevel=1)
        pytest.skip(f"SKIPPING the Prometheus tests: {reason}")
    return str(shutil.which("promtool"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        rules = workdir / "tlserve-rules.yml"
        # NOTE: evaluate every rule each second, so the test need not wait for the 30 s interval
        rules.write_text(
            (DEPLOY / "prometheus" / "tlserve-rules.yml").read_text().replace("interval: 30s", "interval: 1s")
        )
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "tlserve", "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("w"),
        )  # fmt: skip
        self.log = workdir / "prometheus.log"
        self.wait(lambda: self.get("/-/ready", raw=True), "Prometheus ready")

    def get(self, path: str, raw: bool = False, **params: str) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait(self, check: Any, what: str, timeout_s: float = 60) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout_s} s\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def photographs() -> list[bytes]:
    """PNGs of scikit-image's sample photographs: another domain than the exported run's colours."""
    import io

    from PIL import Image

    from tests.exporters.test_reference import domain_images

    encoded_photos = []
    for pixels in domain_images(48):
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype("uint8")).save(buffer, "PNG")
        encoded_photos.append(buffer.getvalue())
    return encoded_photos


SHIFTED = 16
"""Calls of 10 red images each to the exported model ``painted``: a class mix far from its priors."""


@pytest.fixture(scope="module")
def scraped(
    promtool: str, tmp_path_factory: pytest.TempPathFactory, exported: Any
) -> Iterator[tuple[Prometheus, ServerProcess]]:
    """A tlserve server that answered a known number of calls, scraped by a real Prometheus; beside
    the tiny models, the real export (with reference statistics) as ``painted``, asked about red
    images only, and as ``painted-photos``, asked about photographs."""
    repository = tmp_path_factory.mktemp("models")
    publish(repository, "colors", 1)
    break_onnx(publish(repository, "broken", 1))  # a model whose only version cannot load
    for name in ("painted", "painted-photos"):
        shutil.copytree(exported.path, repository / name / "1")
    # NOTE: capture on for painted-photos (the photographs are novel): the capture panel has data
    config = tmp_path_factory.mktemp("config") / "tlserve.json"
    config.write_text(json.dumps({"models": {"painted-photos": {"capture_novelty_above": 1.0}}}))
    captured = tmp_path_factory.mktemp("captured")
    server = ServerProcess(repository, "--config", str(config), "--capture-dir", str(captured))
    prometheus = None
    try:
        with server.client() as client:
            client.wait_ready("colors")
            # NOTE: one call first, so that its series exists before Prometheus' first scrape: the
            # first sample of a new series cannot show an increase, and rate() would miss the burst
            client.classify("colors", [encoded("red")])
            prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{server.metrics_port}")
            prometheus.wait(lambda: prometheus.value('up{job="tlserve"}') == 1, "first scrape")
            for _ in range(SENT_OK):
                client.classify("colors", [encoded("red")])
            for _ in range(SENT_NOT_FOUND):
                with pytest.raises(Exception, match="NOT_FOUND"):
                    client.classify("nope", [encoded("red")])
            for _ in range(SENT_PREDICT):
                client.predict_images("colors", [encoded("blue")])
            client.wait_ready("painted")
            client.wait_ready("painted-photos")
            for call in range(SHIFTED):
                client.classify("painted", [encoded("red", seed=call * 10 + i) for i in range(10)])
            photos = photographs()
            for start in range(0, len(photos), 10):
                client.classify("painted-photos", photos[start : start + 10])
        yield prometheus, server
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert server.stop() == 0, server.log


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def test_counts_through_prometheus_equal_what_was_sent(scraped: tuple[Prometheus, ServerProcess]) -> None:
    prometheus, _ = scraped
    ok = (
        'sum(tlserve_requests_total{api="native", method="Classify", code="OK", model="colors", version="1"})'
    )
    prometheus.wait(lambda: prometheus.value(ok) == SENT_OK + 1, f"{ok} == {SENT_OK} + the first call")
    assert (
        prometheus.value('sum(tlserve_requests_total{method="Classify", code="NOT_FOUND", model=""})')
        == SENT_NOT_FOUND
    )
    assert (
        prometheus.value('sum(tlserve_requests_total{api="tfs", method="Predict", code="OK"})')
        == SENT_PREDICT
    )
    count = 'sum(tlserve_request_duration_seconds_count{model="colors", method="Classify", code="OK"})'
    assert prometheus.value(count) == SENT_OK + 1
    assert prometheus.value('sum(tlserve_batch_size_sum{model="colors"})') == SENT_OK + 1 + SENT_PREDICT


def test_a_broken_model_is_visible_and_alerts(scraped: tuple[Prometheus, ServerProcess]) -> None:
    prometheus, _ = scraped
    assert prometheus.value('tlserve_model_ready{model="broken"}') == 0
    assert prometheus.value('tlserve_model_failed_versions{model="broken"}') == 1
    assert prometheus.value('tlserve_model_load_failures_total{model="broken"}') == 1

    def alerts() -> dict[str, str] | None:
        firing = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        found = {a["labels"]["alertname"]: a["state"] for a in firing if a["labels"].get("model") == "broken"}
        return found if len(found) == 2 else None

    assert prometheus.wait(alerts, "alerts about the broken model") == {
        "TlserveModelLoadFailures": "firing",
        "TlserveModelNotReady": "pending",  # fires after 5 minutes
    }


def test_the_operator_rules_are_the_rule_file(promtool: str) -> None:
    import yaml

    rule_file = yaml.safe_load((DEPLOY / "prometheus" / "tlserve-rules.yml").read_text())
    operator = yaml.safe_load((DEPLOY / "prometheus" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule" and operator["spec"]["groups"] == rule_file["groups"]


def test_p99_is_finite_and_in_range(scraped: tuple[Prometheus, ServerProcess]) -> None:
    prometheus, _ = scraped
    buckets = 'tlserve_request_duration_seconds_bucket{method="Classify", code="OK"}'
    expr = f"histogram_quantile(0.99, sum by (le) (rate({buckets}[1m])))"
    p99 = prometheus.wait(lambda: _finite(prometheus.value(expr)), "p99 available")
    assert math.isfinite(p99) and 0 < p99 <= 10, p99


def test_shipped_rules_load_and_evaluate(scraped: tuple[Prometheus, ServerProcess]) -> None:
    prometheus, _ = scraped

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = prometheus.wait(evaluated, "every rule evaluated")
    assert len(rules) == 16
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    recorded = 'tlserve:request_duration_seconds:p50{model="colors"}'
    p50 = prometheus.wait(lambda: _finite(prometheus.value(recorded)), "p50 recorded")
    assert 0 < p50 <= 10
    # NOTE: a group's rules are committed one by one, so the p50 can be visible a moment before the
    # ratio evaluated after it in the same round: wait for the ratio too (0 is falsy, hence the list)
    ratio = 'tlserve:request_errors:ratio_rate5m{model="colors"}'
    found = prometheus.wait(lambda: [v] if (v := prometheus.value(ratio)) is not None else None, "ratio")
    assert found == [0]


def test_every_dashboard_query_evaluates(scraped: tuple[Prometheus, ServerProcess]) -> None:
    prometheus, _ = scraped
    dashboard = json.loads((DEPLOY / "grafana" / "tlserve-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        result = prometheus.query(concrete)
        assert result["status"] == "success", (expr, result)
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")
    assert variable["definition"] == "label_values(tlserve_model_ready, model)"
    models = {r["metric"]["model"] for r in prometheus.query("tlserve_model_ready")["data"]["result"]}
    assert models == {"colors", "broken", "painted", "painted-photos"}  # a broken model included
    for panel in dashboard["panels"]:  # every panel shows something for a server that served calls
        queries = [
            t["expr"].replace("$__rate_interval", "1m").replace("$model", ".*") for t in panel["targets"]
        ]

        def shown(queries: list[str] = queries) -> bool:
            return any(prometheus.query(q)["data"]["result"] for q in queries)

        prometheus.wait(shown, f"panel {panel['title']!r} shows data", timeout_s=20)


def test_promtool_on_metrics_rules_and_config(
    scraped: tuple[Prometheus, ServerProcess], promtool: str
) -> None:
    _, server = scraped
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    for command in (["check", "rules", "tlserve-rules.yml"], ["test", "rules", "tlserve-rules.test.yml"],
                    ["check", "config", "prometheus.yml"]):  # fmt: skip
        result = subprocess.run(
            [promtool, *command], cwd=DEPLOY / "prometheus", capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_shifted_class_mix_raises_drift_and_its_alert(scraped: tuple[Prometheus, ServerProcess]) -> None:
    """Only red images for a model trained on three balanced colours: the drift gauge leaves 0 for
    about 0.46 (every image in one of three balanced classes), the alert goes pending (it fires
    after 15 minutes), and each prediction is counted by class."""
    prometheus, _ = scraped
    drift = 'tlserve_class_drift{model="painted", version="1"}'
    value = prometheus.wait(lambda: _finite(prometheus.value(drift)), "the drift gauge scraped")
    assert 0.3 < value <= 0.5, value
    red = prometheus.wait(
        lambda: prometheus.value('tlserve_predictions_total{model="painted", class="red"}'), "red counted"
    )
    assert red >= 0.8 * SHIFTED * 10
    assert prometheus.value('sum(tlserve_prediction_confidence_count{model="painted"})') == SHIFTED * 10

    def state() -> str | None:
        alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        found = [a["state"] for a in alerts if a["labels"]["alertname"] == "TlserveClassDrift"]
        return found[0] if found else None

    assert prometheus.wait(state, "TlserveClassDrift pending") == "pending"
    # too few images (20 photographs) for a drift figure: NaN, no alert
    assert _finite(prometheus.value('tlserve_class_drift{model="painted-photos"}')) is None


def test_photographs_are_more_novel_than_the_colours_trained_on(
    scraped: tuple[Prometheus, ServerProcess],
) -> None:
    prometheus, _ = scraped

    def mean(model: str) -> float | None:
        selector = f'{{model="{model}"}}'
        return _finite(
            prometheus.value(
                f"tlserve_prediction_novelty_sum{selector} / tlserve_prediction_novelty_count{selector}"
            )
        )

    colours = prometheus.wait(lambda: mean("painted"), "novelty of the colours")
    photos = prometheus.wait(lambda: mean("painted-photos"), "novelty of the photographs")
    assert photos > 2 * colours, (photos, colours)

    def share(model: str) -> float | None:
        return _finite(prometheus.value(f'tlserve:prediction_novel:ratio_rate15m{{model="{model}"}}'))

    # NOTE: 0 is falsy, hence the lists
    (photos_share,) = prometheus.wait(
        lambda: [v] if (v := share("painted-photos")) is not None else None, "the photographs' novel share"
    )
    (colours_share,) = prometheus.wait(
        lambda: [v] if (v := share("painted")) is not None else None, "the colours' novel share"
    )
    assert photos_share >= 0.25 and photos_share >= 3 * colours_share, (photos_share, colours_share)
