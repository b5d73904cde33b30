"""The dashboard labels every message type and trace event from one table the server sends
(raftkv/dashboard/schema.py), so the page cannot show a type Python does not have, or miss one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from raftkv.core import EVENT_TYPES, Message, TraceEvent
from raftkv.dashboard.schema import EVENT_LABELS, FAMILIES, GLYPHS, MESSAGE_LABELS, schema
from raftkv.transport import codec

STATIC = Path(__file__).resolve().parent.parent / "raftkv" / "dashboard" / "static"


def subclasses(cls: type) -> set[type]:
    """Every class derived from `cls`. A slotted dataclass is a new class made from the one its
    body defines; that first one is still listed by __subclasses__ until collected, so it is skipped."""
    found = set()
    for sub in cls.__subclasses__():
        if "__slots__" in vars(sub):
            found |= {sub} | subclasses(sub)
    return found


def test_every_message_class_has_a_label_and_a_declared_glyph() -> None:
    assert subclasses(Message) == set(MESSAGE_LABELS) == set(codec.message_types())
    assert all(label and glyph in GLYPHS for label, glyph in MESSAGE_LABELS.values())


def test_every_trace_event_class_has_a_label() -> None:
    assert subclasses(TraceEvent) == set(EVENT_LABELS) == set(EVENT_TYPES)
    assert set(schema()["events"]) == {t.kind for t in EVENT_TYPES}


def test_the_page_names_no_message_type_of_its_own() -> None:
    """The page once labelled PreVoteRequest and InstallSnapshot, which do not exist: it must take
    every message name from the schema, and colour every family of glyphs the schema declares."""
    script = "\n".join(p.read_text() for p in STATIC.glob("*.js"))
    named = {cls.__name__ for cls in MESSAGE_LABELS} | {"PreVoteRequest", "PreVoteResponse", "InstallSnapshot",
                                                         "SnapshotResponse"}
    assert not {name for name in named if re.search(rf"\b{name}\b", script)}
    styles = (STATIC / "style.css").read_text()
    assert all(f".m-{family}" in styles for family in FAMILIES)
    json.dumps(schema())  # JSON-able as sent
