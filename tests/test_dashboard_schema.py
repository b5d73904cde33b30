"""The dashboard labels every message type and trace event from one table the server sends
(raftkv/dashboard/schema.py), so the page cannot show a type Python does not have, or miss one."""

from __future__ import annotations

import json
import re
from pathlib import Path

from raftkv.core import EVENT_TYPES, EntryKind, Message, TraceEvent
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


def test_the_log_table_marks_each_kind_of_entry_that_is_not_a_client_write() -> None:
    """A log cell's class is `kind-` and the entry's kind as the node reports it (log_view.py): the
    style sheet must name those same kinds, or a configuration entry looks like any write."""
    css = (STATIC / "style.css").read_text()
    for kind in (EntryKind.NOOP, EntryKind.CONF_CHANGE):
        assert f".cell.kind-{kind.name.lower()}" in css, kind


def test_term_colours_share_no_colour_with_the_messages_and_are_paler() -> None:
    """A term is a pale fill and a message a saturated glyph: no term may be read as a message."""
    palette = re.search(r"TERM_PALETTE = \[([^\]]*)\]", (STATIC / "dom.js").read_text())
    assert palette, "dom.js declares TERM_PALETTE"
    terms = {c.upper() for c in re.findall(r"#[0-9A-Fa-f]{6}", palette.group(1))}
    styles = (STATIC / "style.css").read_text()
    messages = {family: colour.upper() for family, colour in re.findall(r"\.m-([a-z]+) \{ --m: (#[0-9A-Fa-f]{6}); \}",
                                                                          styles)}
    assert set(FAMILIES) <= set(messages), messages
    assert len(set(messages.values())) == len(messages), "two message families share a colour"
    assert not terms & set(messages.values())

    def lightness(colour: str) -> float:
        r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
        return (max(r, g, b) + min(r, g, b)) / 2

    assert min(map(lightness, terms)) > max(lightness(messages[f]) for f in FAMILIES)
