"""Log output: JSON lines, written in batches but never held back for long."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Iterator

import pytest

from cachesvc.config import LogConfig
from cachesvc.logs import FLUSH_SECONDS, AccessLog, BufferedStreamHandler, JsonFormatter, configure


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def make_record(level: int, msg: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("cachesvc.test", level, __file__, 1, msg, None, None)
    record.fields = fields
    return record


def test_buffered_lines_reach_the_stream_without_further_logging() -> None:
    read_fd, write_fd = os.pipe()
    handler = BufferedStreamHandler(write_fd)
    handler.setFormatter(JsonFormatter())
    try:
        handler.handle(make_record(logging.INFO, "first"))  # flushed: first line after a pause
        time.sleep(FLUSH_SECONDS * 1.5)
        handler.handle(make_record(logging.INFO, "request", status=200))
        deadline = time.monotonic() + 5 * FLUSH_SECONDS
        data = b""
        while b"request" not in data and time.monotonic() < deadline:
            time.sleep(0.02)
            data += read_available(read_fd)
        lines = [json.loads(line) for line in data.decode().splitlines()]
        assert [line["msg"] for line in lines][-1] == "request"
        assert lines[-1]["status"] == 200
        assert lines[-1]["time"].endswith("Z")
    finally:
        handler.close()
        os.close(read_fd)
        os.close(write_fd)


def test_warnings_are_flushed_at_once_and_close_flushes_everything() -> None:
    read_fd, write_fd = os.pipe()
    handler = BufferedStreamHandler(write_fd)
    handler.setFormatter(JsonFormatter())
    try:
        handler.force_flush()
        handler.handle(make_record(logging.INFO, "quiet"))
        handler.handle(make_record(logging.WARNING, "loud"))
        assert b'"msg":"loud"' in read_available(read_fd)
        handler.handle(make_record(logging.INFO, "last"))
        handler.close()
        assert b'"msg":"last"' in read_available(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_json_time_keeps_milliseconds_within_a_second() -> None:
    formatter = JsonFormatter()
    record = make_record(logging.INFO, "x")
    record.created = 1_764_140_000.123
    first = json.loads(formatter.format(record))["time"]
    record.created = 1_764_140_000.987
    second = json.loads(formatter.format(record))["time"]
    assert first == "2025-11-26T06:53:20.123Z"
    assert second == "2025-11-26T06:53:20.987Z"


def test_json_time_rounds_to_milliseconds_and_never_reaches_the_next_second() -> None:
    formatter = JsonFormatter()
    record = make_record(logging.INFO, "x")
    record.created = 1_764_140_000.0004
    assert json.loads(formatter.format(record))["time"] == "2025-11-26T06:53:20.000Z"
    record.created = 1_764_140_000.9996
    assert json.loads(formatter.format(record))["time"] == "2025-11-26T06:53:20.999Z"


def test_json_lines_encode_like_json_dumps() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque \u00e9"

    fields: dict[str, object] = {
        "client": "127.0.0.1", "status": 200, "duration_ms": 0.25, "upstream": None,
        "ok": True, "path": '/v2/a"b\\c\n', "list": [1, "x", None], "nested": {"k": 1.5},
        "obj": Opaque(),
    }  # fmt: skip
    record = make_record(logging.INFO, "request %s", **fields)
    record.args = ("done",)
    record.created = 1_764_140_000.5
    line = JsonFormatter().format(record)
    expected = {
        "time": "2025-11-26T06:53:20.500Z", "level": "info", "logger": "cachesvc.test",
        "msg": "request done", **fields, "obj": "opaque \u00e9",
    }  # fmt: skip
    assert line == json.dumps(expected, default=str, separators=(",", ":"))


@pytest.mark.parametrize(
    "value",
    [
        "caf\u00e9 \u2603",  # non-ASCII: escaped, as json.dumps does
        "/v2/\udcff/bad-utf8",  # a lone surrogate (undecodable bytes in a path)
        2**70,  # beyond 64 bits
        {1: "int key"},
        datetime.datetime(2026, 12, 1, 8, 0, tzinfo=datetime.UTC),  # default=str
        [("tuple", 1), None, True, -0.5, 12.25],
    ],
)
def test_json_lines_match_json_dumps_where_orjson_alone_would_not(value: object) -> None:
    record = make_record(logging.INFO, "x", value=value)
    record.created = 1_764_140_000.5
    expected = {
        "time": "2025-11-26T06:53:20.500Z", "level": "info", "logger": "cachesvc.test",
        "msg": "x", "value": value,
    }  # fmt: skip
    line = JsonFormatter().format(record)
    assert line == json.dumps(expected, default=str, separators=(",", ":"))
    assert line.isascii()


@pytest.fixture
def saved_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Puts back what a test and :func:`configure` change in logging: the root's handlers,
    the levels of root, cachesvc.access and aiohttp.access, whether the access log is
    disabled, and the record details logging computes."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    root, access = logging.getLogger(), logging.getLogger("cachesvc.access")
    loggers = (root, access, logging.getLogger("aiohttp.access"))
    handlers, levels, disabled = root.handlers[:], [lg.level for lg in loggers], access.disabled
    yield
    root.handlers[:] = handlers
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
    access.disabled = disabled


@pytest.mark.usefixtures("saved_logging")
def test_access_lines_written_directly_match_the_logging_path() -> None:
    read_fd, write_fd = os.pipe()
    handler = BufferedStreamHandler(write_fd)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    logger = logging.getLogger("cachesvc.test-access")
    access = AccessLog(logger)
    fields: dict[str, object] = {"client": "127.0.0.1", "status": 200, "bytes": 5, "error": None}

    def listening(record: logging.LogRecord) -> bool:
        return True

    try:
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        assert access._direct_handler() is handler
        access.write(fields)
        logger.addFilter(listening)  # anything else listening: the logging path
        assert access._direct_handler() is None
        access.write(fields)
        handler.force_flush()
        direct, logged = (json.loads(line) for line in read_available(read_fd).splitlines())
        assert direct.pop("time")[-1] == logged.pop("time")[-1] == "Z"
        assert direct == logged == {
            "level": "info",
            "logger": "cachesvc.test-access",
            "msg": "request",
            **fields,
        }
        assert list(direct) == list(logged)  # same key order, byte for byte apart from time
        logger.removeFilter(listening)
        for repeated in ({"msg": "overridden", "status": 1}, {}):  # merged, not spliced
            access.write(repeated)
            handler.force_flush()
            (line,) = (json.loads(raw) for raw in read_available(read_fd).splitlines())
            assert line.pop("time")[-1] == "Z"
            assert line == {"level": "info", "logger": logger.name, "msg": "request", **repeated}
            assert list(line) == ["level", "logger", "msg", *(k for k in repeated if k != "msg")]
    finally:
        logger.removeFilter(listening)
        handler.close()
        os.close(read_fd)
        os.close(write_fd)


def test_access_lines_reach_other_handlers_through_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    access = AccessLog(logging.getLogger("cachesvc.test-access"))
    with caplog.at_level(logging.INFO, logger="cachesvc.test-access"):
        access.write({"status": 404})
    assert [getattr(r, "fields", None) for r in caplog.records] == [{"status": 404}]


@pytest.mark.usefixtures("saved_logging")
@pytest.mark.parametrize("access_log", [True, False])
def test_access_log_is_its_own_switch_whatever_the_level(
    monkeypatch: pytest.MonkeyPatch, access_log: bool
) -> None:
    read_fd, write_fd = os.pipe()
    monkeypatch.setattr(sys, "stderr", os.fdopen(write_fd, "w", closefd=False))
    root, access = logging.getLogger(), logging.getLogger("cachesvc.access")
    try:
        configure(LogConfig(level="warning", access_log=access_log))
        (handler,) = root.handlers
        assert isinstance(handler, BufferedStreamHandler)
        AccessLog(access).write({"status": 200})
        logging.getLogger("cachesvc.fill").info("below the level")
        logging.getLogger("cachesvc.fill").warning("at the level")
        handler.close()
        lines = [json.loads(line) for line in read_available(read_fd).splitlines()]
        expected = ["request", "at the level"] if access_log else ["at the level"]
        assert [line["msg"] for line in lines] == expected
    finally:
        os.close(read_fd)
        os.close(write_fd)
