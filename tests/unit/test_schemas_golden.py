"""Every golden file (one per event tag ever shipped, and a few commands) decodes with today's code.

Golden files are frozen (tests/golden/README.md): a failure here means a change to schemas/ broke
the reading of events that are already in someone's log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.commands import COMMAND_TYPES, AgentCommand
from schemas.events import TAGS, AgentEvent, LifecycleChanged
from schemas.states import Activity, Lifecycle

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EVENT_FILES = sorted(GOLDEN.glob("*.json"))
COMMAND_FILES = sorted((GOLDEN / "commands").glob("*.json"))
COMMAND_TAGS = {t.__struct_config__.tag: t for t in COMMAND_TYPES}


def wire_names(cls: type[msgspec.Struct]) -> dict[str, str]:
    """Map each field's name on the wire (e.g. "from") to its attribute (e.g. "frm")."""
    return {f.encode_name: f.name for f in msgspec.structs.fields(cls)}


def assert_fields_survive(raw: dict[str, Any], obj: msgspec.Struct) -> None:
    """Each field in the golden file is still a field of the class and reads back the same."""
    names = wire_names(type(obj))
    unknown = sorted(set(raw) - {"type"} - set(names))
    assert not unknown, f"{type(obj).__name__} lost field(s) {unknown} that shipped events hold"
    builtins = msgspec.json.decode(msgspec.json.encode(obj))
    for key, value in raw.items():
        if key == "type":
            continue
        got = builtins[key]
        if key == "at":
            assert datetime.fromisoformat(got) == datetime.fromisoformat(value)
        else:
            assert got == value, f"{key}: golden {value!r}, decoded {got!r}"


def test_golden_folder_holds_files() -> None:
    assert len(EVENT_FILES) >= len(TAGS)
    assert len(COMMAND_FILES) >= 5


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_every_event_tag_has_a_golden_file(tag: str) -> None:
    path = GOLDEN / f"{tag}.json"
    assert path.is_file(), (
        f"event tag {tag!r} has no golden file {path.name}: add an example to EVENTS in "
        "tests/golden/make_golden.py and run it"
    )


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.stem)
def test_golden_event_decodes_with_todays_code(path: Path) -> None:
    raw_bytes = path.read_bytes()
    raw = msgspec.json.decode(raw_bytes)
    assert raw["type"] == path.stem, "a golden file is named after its tag"
    assert raw["type"] in TAGS, f"tag {raw['type']!r} was shipped; keep its class in AgentEvent"
    event = msgspec.json.decode(raw_bytes, type=AgentEvent)
    assert type(event) is TAGS[raw["type"]]
    assert event.agent_id == raw["agent_id"] != ""
    assert event.event_id == raw["event_id"] != ""
    assert event.at.tzinfo is not None
    assert_fields_survive(raw, event)


def test_golden_lifecycle_changed_reads_from_and_to() -> None:
    raw = (GOLDEN / "lifecycle.changed.json").read_bytes()
    event = msgspec.json.decode(raw, type=AgentEvent)
    assert isinstance(event, LifecycleChanged)
    assert (event.frm, event.to) == (Lifecycle.RUNNING, Lifecycle.PAUSED)
    assert event.at == datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
    assert event.actor == "user:ada" and event.causation == "cmd-7f3c9a1e"
    assert len(event.prev_hash) == 32


def test_golden_activity_changed_reads_enums() -> None:
    event = msgspec.json.decode((GOLDEN / "activity.changed.json").read_bytes(), type=AgentEvent)
    assert event.frm is Activity.WORKING  # type: ignore[union-attr]
    assert event.to is Activity.AWAITING_INPUT  # type: ignore[union-attr]


def test_golden_file_missing_a_later_field_still_decodes() -> None:
    """A field added with a default is absent from old events: decoding falls back to it."""
    raw = msgspec.json.decode((GOLDEN / "service.started.json").read_bytes())
    del raw["port"], raw["actor"], raw["causation"], raw["prev_hash"]
    event = msgspec.json.decode(msgspec.json.encode(raw), type=AgentEvent)
    assert (event.port, event.actor, event.prev_hash) == (None, "", "")  # type: ignore[union-attr]


@pytest.mark.parametrize("path", COMMAND_FILES, ids=lambda p: p.stem)
def test_golden_command_decodes_with_todays_code(path: Path) -> None:
    raw_bytes = path.read_bytes()
    raw = msgspec.json.decode(raw_bytes)
    assert raw["type"] == path.stem
    cmd = msgspec.json.decode(raw_bytes, type=AgentCommand)
    assert type(cmd) is COMMAND_TAGS[raw["type"]]
    assert cmd.id == raw["id"] != ""
    assert_fields_survive(raw, cmd)
