"""raftkv's structured logs: one JSON object per line on stderr, quiet by default (warnings only;
`-v` or RAFTKV_LOG=INFO for more).

A line holds "t" (the local time), "level", "logger", "msg" and, for a line written within a
traced request, its "trace_id" and "span_id" (set on the record by the filter node/tracing.py
installs); a traceback, if any, is "exc". Every field goes through json.dumps, so a message that
holds quotes, backslashes or newlines (a peer's error text, a file name) stays one valid line.
"""

from __future__ import annotations

import json
import logging
import os

__all__ = ["JsonLines", "setup_logging"]

_CARRIED = ("trace_id", "span_id")  # record attributes a filter may add, copied when present


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"t": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "msg": record.getMessage()}
        for name in _CARRIED:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.getLevelName(os.environ.get("RAFTKV_LOG", "WARNING").upper())
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler])
