"""The JSON log format and the reloadable level filter."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger

from izreg.service.logs import LogSetup, event_as_json


def test_a_json_line_per_event_with_its_fields():
    out = io.StringIO()
    setup = LogSetup("json", "info")
    log = Logger(namespace="izreg.test", observer=setup.observer(out))
    log.info("{method} {route} {status}", method="GET", route="/v2/", status=200, obj=object())
    log.debug("hidden")
    setup.set_level("debug")
    log.debug("shown")
    setup.set_level("error")
    log.warn("hidden too")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["message"] == "GET /v2/ 200" and first["level"] == "info" and first["namespace"] == "izreg.test"
    assert (first["method"], first["route"], first["status"]) == ("GET", "/v2/", 200)
    assert first["time"].endswith("Z") and isinstance(first["obj"], str)
    assert json.loads(lines[1])["message"] == "shown"


def test_a_failure_carries_its_traceback():
    try:
        1 / 0
    except ZeroDivisionError:
        from twisted.python.failure import Failure

        event = {"log_format": "boom", "log_failure": Failure(), "log_time": 0, "log_namespace": "x"}
    record = json.loads(event_as_json(event))
    assert "ZeroDivisionError" in record["traceback"] and record["message"] == "boom"
