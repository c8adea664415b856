"""Write prometheusrule.yaml (the Operator's form) from tlserve-rules.yml: `make prometheusrule`."""

from pathlib import Path

HERE = Path(__file__).parent
rules = [line for line in (HERE / "tlserve-rules.yml").read_text().splitlines() if not line.startswith("#")]
text = (
    """# Generated from tlserve-rules.yml by make_prometheusrule.py (make prometheusrule); do not edit.
# The Prometheus Operator does not read rule files: it loads rules from PrometheusRule objects.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tlserve
  labels:
    app.kubernetes.io/name: tlserve
spec:
"""
    + "\n".join(f"  {line}" if line else "" for line in rules)
    + "\n"
)
(HERE / "prometheusrule.yaml").write_text(text)
