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


def _access_line(log_format: str) -> str:
    """One access event through the server's observer in C{log_format}: the line written."""
    import izreg.http.accesslog as accesslog

    out = io.StringIO()
    info = accesslog.RequestInfo("rid-1", "GET", "/v2/", None, 200, 0, 2, 0.0012, "127.0.0.1", "acc", "device",
                                 None, "dev1", True)
    saved = accesslog.log, accesslog.request_info
    accesslog.log = Logger(namespace="izreg.access", observer=LogSetup(log_format, "info").observer(out))
    accesslog.request_info = lambda request, now, status=None: info
    try:
        accesslog.AccessLog(lambda: 0.0)(object())
    finally:
        accesslog.log, accesslog.request_info = saved
    return out.getvalue()


def test_the_access_line_is_formatted_once_and_not_repeated_as_a_field():
    text = _access_line("text")
    assert text.endswith(" [izreg.access#info] 127.0.0.1 GET /v2/ 200 in=0 out=2 0.001s device acc/dev1 id=rid-1\n")
    record = json.loads(_access_line("json"))
    assert record["message"] == "127.0.0.1 GET /v2/ 200 in=0 out=2 0.001s device acc/dev1 id=rid-1"
    assert "access_line" not in record and record["who"] == "device acc/dev1" and record["duration"] == 0.0012


def test_the_text_log_time_is_twisteds_to_the_second():
    from twisted.logger import formatTime

    from izreg.service.logs import _SecondsTime

    seconds = _SecondsTime()
    for when in (None, 0.0, 1.5, 1.25, 1.9999999, 1700000000.25, 1700000000.9999996, 1700000001.0, 1699999999.5):
        assert seconds(when) == formatTime(when), when


def test_a_preformatted_line_is_written_as_twisted_would_write_it():
    """The text and JSON observers' shortcut for an access event gives the text twisted.logger's formatter gives."""
    from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText, formatTime

    from izreg.service.logs import text_file_observer

    events = [
        {"log_format": "{access_line}", "access_line": "127.0.0.1 GET /v2/ 200", "log_time": 1700000000.25,
         "log_namespace": "izreg.access", "log_level": LogLevel.info},
        {"log_format": "{access_line}", "access_line": "two\nlines", "log_time": 1700000001.5, "log_system": "sys"},
        {"log_format": "{access_line}", "access_line": "no level or namespace"},
        {"log_format": "{access_line}", "access_line": ""},
        {"log_format": "{access_line}", "access_line": 42, "log_time": 1.0},  # not a text: the formatter's way
        {"log_format": "{access_line} {other}", "access_line": "x", "other": "y", "log_time": 2.0},
    ]
    for event in events:
        out = io.StringIO()
        text_file_observer(out)(dict(event))
        assert out.getvalue() == (formatEventAsClassicLogText(dict(event), formatTime=formatTime) or ""), event
        if "log_time" in event:
            assert json.loads(event_as_json(dict(event)))["message"] == formatEvent(dict(event)), event


def test_standard_library_records_become_events_of_their_logger_and_level():
    """psycopg's pool logs with the standard library: its lines join ours (namespace, level), once."""
    import logging

    from twisted.logger import LogLevel, capturedLogs, formatEvent

    from izreg.service.logs import StandardLogs, forward_standard_logs

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        forward_standard_logs()
        forward_standard_logs()  # make_server runs once per server: the handler is added once
        assert len([h for h in root.handlers if isinstance(h, StandardLogs)]) == 1
        with capturedLogs() as events:
            logging.getLogger("psycopg.pool").warning("the database is reachable again (after %.0f s)", 16.2)
            logging.getLogger("botocore.test").error("boom %s", "x")
            logging.getLogger("psycopg.pool").info("below the root logger's level: not forwarded")
        assert [(e["log_namespace"], e["log_level"], formatEvent(e)) for e in events] == [
            ("psycopg.pool", LogLevel.warn, "the database is reachable again (after 16 s)"),
            ("botocore.test", LogLevel.error, "boom x"),
        ]
        out = io.StringIO()
        LogSetup("json", "info").observer(out)(events[0])
        record = json.loads(out.getvalue())
        assert (record["namespace"], record["level"]) == ("psycopg.pool", "warn")
    finally:
        root.handlers[:] = before
