"""A log line is one JSON object whatever its message holds (quotes, backslashes, newlines, a
traceback), with the trace ids a traced request's filter put on the record."""

from __future__ import annotations

import json
import logging
import sys

from raftkv.logs import JsonLines


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("raftkv.node", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_message_with_quotes_backslashes_and_newlines_stays_one_valid_line() -> None:
    text = JsonLines().format(record('peer %s said "no" at C:\\wal\n(then closed)', "node2"))
    assert "\n" not in text
    line = json.loads(text)
    assert line["msg"] == 'peer node2 said "no" at C:\\wal\n(then closed)'
    assert (line["level"], line["logger"]) == ("WARNING", "raftkv.node") and "trace_id" not in line


def test_trace_ids_and_a_traceback_are_fields_of_the_line() -> None:
    try:
        raise OSError("disk gone")
    except OSError:
        rec = record("fsync failed", trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331")
        rec.exc_info = sys.exc_info()
    line = json.loads(JsonLines().format(rec))
    assert (line["trace_id"], line["span_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert "OSError: disk gone" in line["exc"]
