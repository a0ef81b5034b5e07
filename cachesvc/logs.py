"""Log set-up: one JSON object per line (or plain text), on stderr.

Structured fields travel in ``extra={"fields": {...}}``. Nothing that logs here is
given credentials or tokens; upstream URLs are logged without query strings.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from typing import TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from cachesvc.config import LogConfig

# Lines are encoded by orjson (a public API, about 7x faster here than the json
# module's reusable C encoder for an access line). The output stays byte for byte
# what json.dumps(line, default=str, separators=(",", ":")) writes: datetimes and
# dataclasses go to ``default=str`` as there, and whatever orjson writes differently
# (non-ASCII, which json escapes; integers beyond 64 bits, non-string keys, lone
# surrogates, which orjson refuses) is rare and encoded by the json module instead.
# Two differences are kept, both valid JSON for the same values: a NaN or infinite
# float is ``null`` (json writes NaN), and an exponent has no padding (1e-7, not 1e-07).
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_JSON = json.JSONEncoder(default=str, separators=(",", ":"))


def _encode(line: dict[str, object]) -> str:
    try:
        data = orjson.dumps(line, default=str, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _JSON.encode(line)
    return data.decode() if data.isascii() else _JSON.encode(line)


# The keys every line starts with; fields that repeat one are merged, not spliced.
_LEADING_KEYS = frozenset({"time", "level", "logger", "msg"})
# ".000Z" to ".999Z": the millisecond part of a line's time.
_MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))
# Flush buffered log output at least this often (and whenever 64 KiB are waiting).
FLUSH_SECONDS = 0.25


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "logger": ..., "msg": ..., **fields}``."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""
        self._heads: dict[str, str] = {}  # logger name -> the rest of ``head``

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not once per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp + _MILLISECONDS[min(999, round((created - second) * 1000))]

    def head(self, created: float, logger: str) -> str:
        """The encoded start of an INFO ``request`` line, up to and including the comma
        before its fields (``AccessLog``'s lines; the logger's part is built once)."""
        rest = self._heads.get(logger)
        if rest is None:
            encoded = _encode({"level": "info", "logger": logger, "msg": "request"})
            rest = self._heads[logger] = "," + encoded[1:-1] + ","
        return '{"time":"' + self._time(created) + '"' + rest

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        line = self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line)

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        fields: dict[str, object] | None,
    ) -> dict[str, object]:
        """The fields of one line, in order (``format`` and ``AccessLog`` share it)."""
        line: dict[str, object] = {
            "time": self._time(created),
            "level": level.lower(),
            "logger": logger,
            "msg": msg,
        }
        if fields:
            line.update(fields)
        return line


class QuietBadRequests(logging.Filter):
    """Turn aiohttp's traceback for a malformed request into one warning line.

    aiohttp logs an oversized header or request line (a client's mistake, answered
    400) as "Error handling request" with a full traceback; operators should see what
    happened, not a stack.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "bad request answered %s: %s"
            record.args = (exc.code, str(exc.message)[:200])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_bad_requests() -> None:
    """Install ``QuietBadRequests`` on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietBadRequests) for f in server.filters):
        server.addFilter(QuietBadRequests())


class TextFormatter(logging.Formatter):
    """Human-readable lines with the structured fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return text


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes through a buffer and flushes in batches.

    One write syscall per log line cost a noticeable share of a cache hit at thousands
    of requests per second. Lines are flushed when ``FLUSH_SECONDS`` passed since the
    last flush (checked on every line and by a background ticker), at 64 KiB, and on
    ``close``; warnings and errors are flushed at once.
    """

    def __init__(self, fd: int) -> None:
        stream = open(fd, "w", buffering=65536, encoding="utf-8", closefd=False)  # noqa: SIM115
        super().__init__(stream)
        self._last_flush = time.monotonic()
        self._ticker = threading.Thread(target=self._tick, name="log-flush", daemon=True)
        self._stopped = threading.Event()
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(FLUSH_SECONDS):
            self.force_flush()

    def _held_lock(self) -> threading.RLock:
        """The lock ``Handler.handle`` takes around ``emit`` (typeshed: Optional)."""
        lock = self.lock
        assert lock is not None  # Handler.__init__ ran createLock()
        return lock

    def force_flush(self) -> None:
        """Write out whatever is buffered."""
        with self._held_lock():
            self._last_flush = time.monotonic()
            self.stream.flush()

    def flush(self) -> None:
        """Called after every line: flush only when a batch is due."""
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.force_flush()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # which calls the batched ``flush``
        if record.levelno >= logging.WARNING:
            self.force_flush()

    def write_json(self, formatter: JsonFormatter, logger: str, fields: dict[str, object]) -> None:
        """Write one INFO ``request`` line as ``emit`` would, without a ``LogRecord``.

        The four leading keys are spliced in front of the encoded ``fields`` (the
        same bytes as encoding the merged dict, one dict and one encode fewer per
        request), unless ``fields`` repeats one of them.
        """
        if not fields or not _LEADING_KEYS.isdisjoint(fields):
            with self._held_lock():  # the formatter's clock is shared
                line = formatter.line(time.time(), "INFO", logger, "request", fields)
                self.stream.write(_encode(line) + "\n")
        else:
            encoded = _encode(fields)
            with self._held_lock():
                head = formatter.head(time.time(), logger)
                self.stream.write(head + encoded[1:] + "\n")
        self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.force_flush()
        super().close()


class AccessLog:
    """One JSON line per request, written straight to the daemon's log handler.

    Going through ``logging`` builds a ``LogRecord`` and walks the logger tree for every
    request: about a tenth of a manifest hit's time at 10k requests/s. When the setup
    is the one ``configure`` installs for JSON (nothing else listening on the way: no
    filter, no other handler), the line is formatted by the same ``JsonFormatter.line``
    and written directly; otherwise (text format, tests capturing logs) it is logged
    normally. The output is the same either way.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._root = logging.getLogger()

    def write(self, fields: dict[str, object]) -> None:
        """Log ``fields`` as a ``request`` line at INFO, if the logger is enabled."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._direct_handler()
        if handler is None:
            logger.info("request", extra={"fields": fields})
            return
        formatter = handler.formatter
        assert isinstance(formatter, JsonFormatter)
        handler.write_json(formatter, logger.name, fields)

    def _direct_handler(self) -> BufferedStreamHandler | None:
        logger: logging.Logger | None = self._logger
        while logger is not None and logger is not self._root:
            if logger.handlers or logger.filters or not logger.propagate:
                return None
            logger = logger.parent
        root = self._root
        if root.filters or len(root.handlers) != 1:
            return None
        handler = root.handlers[0]
        if (
            type(handler) is not BufferedStreamHandler
            or handler.filters
            or handler.level > logging.INFO
            or type(handler.formatter) is not JsonFormatter
        ):
            return None
        return handler


def configure(config: LogConfig) -> None:
    """Install the configured handler on the root logger."""
    handler = BufferedStreamHandler(sys.stderr.fileno())
    atexit.register(handler.close)
    # Unset: text for a person at a terminal, JSON for a log collector (as uvicorn does).
    text = config.format == "text" or (config.format is None and sys.stderr.isatty())
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # Our lines never show caller, thread or process, so skip computing them for every
    # record (the stack walk alone cost several percent of a manifest hit).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # The access log is its own switch: ``level: warning`` quiets the daemon's chatter,
    # not the one line per request an SRE audits (as nginx's access_log and error_log).
    access = logging.getLogger("cachesvc.access")
    access.disabled = not config.access_log
    access.setLevel(logging.INFO)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
