"""Parse a /metrics answer (OpenMetrics text, on stdin) with Prometheus' own Python
client, and print its families as JSON: {family: {"type": ..., "samples":
[[name, labels, value], ...]}}. A text the parser refuses fails the run."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(out, sys.stdout)
