# -*- test-case-name: tests.service.test_logs -*-
"""
The log observer of ``twistd izreg server``: text (twistd's format) or
``--log-format json`` (one JSON object a line), behind a level filter that
``kill -HUP`` re-reads (``[server] log_level``).

twistd asks the application for an C{ILogObserver} before it falls back to
its own; L{RegistryService} sets ours there. It writes where twistd would
have: stdout with ``-n`` (or ``--logfile=-``), else the ``--logfile``
(default ``twistd.log``).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python import logfile

from izreg.service.config import LOG_LEVELS

#: each level name of the config ([server] log_level, [edge] log_level) -> twisted's level
LEVELS = {name: LogLevel.levelWithName(name) for name in LOG_LEVELS}
#: keys of legacy (twisted.python.log) events that are not facts worth a JSON field
_LEGACY = {"message", "format", "isError", "system", "time", "why", "failure", "printed"}
#: keys that only carry an event's preformatted text (its message): not written as fields of their own
_TEXT_KEYS = {"access_line"}  # izreg.http.accesslog.LINE_KEY
#: the formats of events whose whole message is one such key: their text is that value, as
#: twisted.logger's formatter (pure Python, ~10 us an event) would make it
_TEXT_FORMATS = {"{" + key + "}": key for key in _TEXT_KEYS}


def _preformatted(event: dict) -> str | None:
    """The text of an event whose format is one preformatted text key (an access line), else C{None}."""
    key = _TEXT_FORMATS.get(event.get("log_format"))  # type: ignore[arg-type]
    if key is None or "log_flattened" in event:
        return None
    text = event.get(key)
    return text if isinstance(text, str) else None


def _message(event: dict) -> str:
    """C{formatEvent(event)}, without the formatter for an event whose format is one preformatted text key."""
    text = _preformatted(event)
    return text if text is not None else formatEvent(event)


def _value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def event_as_json(event: dict) -> str:
    """One log event as one JSON line: time, level, namespace, message, and its own simple fields."""
    when = datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.timezone.utc)
    level = event.get("log_level")
    record = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or key in _TEXT_KEYS or key in record:
            continue
        record[key] = _value(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record) + "\n"


def json_file_observer(out: IO[str]) -> FileLogObserver:
    return FileLogObserver(out, event_as_json)


class _SecondsTime:
    """
    twisted.logger's C{formatTime} (RFC 3339, local time, to the second),
    remembered for the last second seen: the same text, without a time zone
    lookup and C{strftime} on every event (~9 us).
    """

    def __init__(self) -> None:
        self.second, self.text = None, "-"

    def __call__(self, when: float | None) -> str:
        second = int(when // 1) if when is not None else None
        if second is None or when - second > 0.9999995:  # datetime would round it up to the next second
            return formatTime(when)
        if second != self.second:
            self.second, self.text = second, formatTime(second)
        return self.text


def text_file_observer(out: IO[str]) -> FileLogObserver:
    """twistd's text format (L{textFileLogObserver}'s), its times formatted once a second."""
    seconds = _SecondsTime()

    def text(event: dict) -> str | None:
        message = _preformatted(event)
        if message is None or "log_failure" in event:
            return formatEventAsClassicLogText(event, formatTime=seconds)
        # formatEventAsClassicLogText's "{time} [{system}] {message}" for a preformatted message (an access line)
        if not message:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        else:
            system = str(system)
        return f"{seconds(event.get('log_time'))} [{system}] {message}".replace("\n", "\n\t") + "\n"

    return FileLogObserver(out, text)


class LogSetup:
    """The observer and the level it filters at (changed in place on SIGHUP)."""

    def __init__(self, log_format: str, level: str) -> None:
        self.format = log_format
        self.predicate = LogLevelFilterPredicate(LEVELS[level])

    def set_level(self, level: str) -> None:
        self.predicate.setLogLevelForNamespace("", LEVELS[level])

    def observer(self, out: IO[str]) -> ILogObserver:
        base = json_file_observer(out) if self.format == "json" else text_file_observer(out)
        return FilteringLogObserver(base, [self.predicate])

    def for_twistd(self, twistd_options) -> ILogObserver | None:
        """
        The observer for twistd's options (the top-level C{ServerOptions}), or
        C{None} to leave twistd's own (syslog).
        """
        if twistd_options is None or twistd_options.get("syslog"):
            return None
        if logs_to_stdout(twistd_options):
            return self.observer(sys.stdout)
        return self.observer(logfile.LogFile.fromFullPath(twistd_options.get("logfile") or "twistd.log"))


class StandardLogs(logging.Handler):
    """
    The standard library's log records (psycopg's pool: "the database is
    unreachable", botocore's warnings), warnings and up, as twisted.logger
    events of their logger's name and level. Without it Python wrote them to
    stderr, which twistd logs as C{[stderr#error]}: a "the database is
    reachable again" at level error, and no JSON fields.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: its format, as logging would not
            message = str(record.msg)
        level = (LogLevel.critical if record.levelno >= logging.CRITICAL else LogLevel.error
                 if record.levelno >= logging.ERROR else LogLevel.warn if record.levelno >= logging.WARNING
                 else LogLevel.info if record.levelno >= logging.INFO else LogLevel.debug)
        Logger(namespace=record.name).emit(level, "{message}", message=message)


def forward_standard_logs() -> None:
    """Send the standard library's log records to twisted.logger (L{StandardLogs}; once per process)."""
    root = logging.getLogger()
    if not any(isinstance(handler, StandardLogs) for handler in root.handlers):
        root.addHandler(StandardLogs())


def offer_observer(parent, observer: ILogObserver | None) -> None:
    """Give twistd's application (C{parent}) C{observer}: twistd asks for one before it uses its own."""
    if observer is not None and hasattr(parent, "setComponent"):
        parent.setComponent(ILogObserver, observer)


def logs_to_stdout(twistd_options) -> bool:
    """Whether twistd's options (C{--logfile=-}, or C{-n} without a log file) send the log to standard output."""
    if twistd_options is None or twistd_options.get("syslog"):
        return False
    path = twistd_options.get("logfile")
    return path == "-" or (not path and bool(twistd_options.get("nodaemon")))
