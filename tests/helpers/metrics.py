"""Scraping a real server's (or edge's) metrics listener."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families


def cut_responses(metrics_url: str, name: str = "izreg_http_responses_cut_total") -> dict[str, float]:
    """The responses cut by reason (the server's counter, or the edge's: C{izreg_edge_responses_cut_total})."""
    text = requests.get(metrics_url, timeout=30).text
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}
