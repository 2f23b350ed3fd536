"""Bounds without a server: what `send` may type, what the relay makes of a mail request, which
control verbs exist, how a dead pane is described, the error log and the CLI's `--json` errors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from actors.agent.monitor import death_cause
from infra import errorlog, natsauth, natscallout
from schemas import commands as c
from schemas import mail as m
from schemas import replies, subjects
from schemas.control import ListRequest
from schemas.errors import BadRequest, InvalidName, PayloadTooLarge, UnknownVerb
from schemas.replies import Reply
from services import cli
from services.cli import inbox
from services.cli.client import FleetClient

ROOT = Path(__file__).resolve().parents[2]


# -- send text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\x00b", "\x1b[31m", "bell\x07", "del\x7f", "c1\x9b2J", "\x08"])
def test_send_text_with_a_control_character_is_refused_when_decoded(bad: str) -> None:
    data = json.dumps({"type": "send", "text": bad}).encode()
    with pytest.raises(InvalidName, match=r"invalid send text .*control character U\+00"):
        replies.decode_request(data, c.AgentCommand, "command")


def test_send_text_may_hold_tabs_newlines_and_any_printable_text() -> None:
    text = "for f in *; do\techo $f\r\ndone\nünïcödé ✓"
    sent = replies.decode_request(
        json.dumps({"type": "send", "text": text}).encode(), c.AgentCommand, "command"
    )
    assert isinstance(sent, c.Send) and sent.text == text


# -- mail through the relay --------------------------------------------------------------------


def test_relayed_mail_is_from_its_sender_whatever_the_request_says() -> None:
    send = m.MailSend(to="b1", body="hi", priority="high")
    message = m.relayed(send, "a1")
    assert message.from_ == "a1" and message.body == "hi"
    with pytest.raises(BadRequest, match="unknown priority 'urgent'"):
        m.relayed(m.MailSend(to="b1", body="x", priority="urgent"), "a1")
    with pytest.raises(PayloadTooLarge):
        m.relayed(m.MailSend(to="b1", body="x" * (m.MAX_BODY_BYTES + 1)), "a1")
    many = {f"h{i}": "v" for i in range(m.MAX_HEADERS + 1)}
    with pytest.raises(BadRequest, match="at most 32 headers"):
        m.relayed(m.MailSend(to="b1", body="x", headers=many), "a1")


def test_a_mail_request_with_a_field_it_does_not_know_is_refused() -> None:
    with pytest.raises(BadRequest, match="from"):
        replies.decode_request(b'{"to":"b1","body":"x","from":"boss"}', m.MailSend)


# -- control verbs -----------------------------------------------------------------------------

_VERB_USE = re.compile(r"""(?:control|node_control)\(\s*["']([a-z_-]+)["']""")


def test_every_control_verb_the_code_uses_is_one_the_fallback_knows() -> None:
    """Else the supervisor would answer `unknown_verb` beside the service that serves it."""
    used = {
        verb
        for folder in ("actors", "services", "infra")
        for path in (ROOT / folder).rglob("*.py")
        for verb in _VERB_USE.findall(path.read_text())
    }
    assert used, "the pattern found no use of subjects.control at all"
    known = set(subjects.CONTROL_VERBS) | set(subjects.CONTROL_FAMILIES)
    assert used <= known, f"add to schemas/subjects.py CONTROL_VERBS: {sorted(used - known)}"


@pytest.mark.parametrize(
    ("subject", "served"),
    [
        ("fleet.ctl.spawn", True),
        ("fleet.ctl.ports.node1", True),
        ("fleet.ctl.mail.a1", True),
        ("fleet.ctl.bogus", False),
        ("fleet.ctl.spawn.extra", False),
        ("fleet.ctl.mail", False),
        ("fleet.ctl.ports.a.b", False),
    ],
)
def test_which_control_subjects_something_serves(subject: str, served: bool) -> None:
    assert subjects.control_served(subject) is served


async def test_the_fleet_client_refuses_an_unknown_verb_before_sending_it() -> None:
    client = FleetClient(None)  # type: ignore[arg-type]  # nothing may be sent
    with pytest.raises(UnknownVerb, match=r"'fleet\.ctl\.bogus': the control verbs are spawn"):
        await client.control("bogus", ListRequest(), Reply)


# -- a dead pane, in words ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "signal", "kept", "said"),
    [
        ("", "9", "", "the agent window's process was killed by signal 9"),
        ("3", "", "3", "the assistant exited with status 3"),
        ("137", "", "137", "the assistant was killed by signal 9 (exit status 137)"),
        ("", "", "0", "the assistant exited with status 0"),
        ("", "", "", "the agent window's process exited (status unknown)"),
    ],
)
def test_the_cause_of_a_dead_pane(status: str, signal: str, kept: str, said: str) -> None:
    assert death_cause(status, signal, kept) == said


# -- the error log -----------------------------------------------------------------------------


def _failing() -> BaseException:
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        return e


def test_a_logged_traceback_lands_under_the_id_its_message_names(tmp_path: Path) -> None:
    handler = errorlog.ErrorLog(errorlog.path_in(tmp_path))
    logger = logging.getLogger("test.errorlog.named")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("the cause")
        except ValueError:
            logger.exception("request failed (error id 0123456789ab)")
            logger.exception("no id given")
        logger.error("no traceback: not written")
    finally:
        logger.removeHandler(handler)
    text = errorlog.path_in(tmp_path).read_text()
    assert text.count("--- error ") == 2
    assert "--- error 0123456789ab " in text and "ValueError: the cause" in text
    assert "no traceback" not in text
    second = re.findall(r"--- error ([0-9a-f]{12}) .*no id given", text)
    assert second and second[0] != "0123456789ab"


def test_the_error_log_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errorlog, "MAX_BYTES", 2_000)
    for _ in range(20):
        errorlog.write(tmp_path, _failing(), "a test")
    path = errorlog.path_in(tmp_path)
    assert path.stat().st_size <= 2_000
    assert path.with_name(path.name + ".1").stat().st_size <= 2_000


# -- the CLI's --json errors -------------------------------------------------------------------


@pytest.fixture
def no_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    for name in ("FLEET_NATS_URL", "FLEET_NATS_CREDS"):
        monkeypatch.delenv(name, raising=False)
    # No handler on this test process's root logger, left behind for the tests after this.
    monkeypatch.setattr(errorlog, "install", lambda state_dir: None)
    return tmp_path / "state"


def test_a_fleet_error_with_json_is_an_error_reply_on_stdout(
    no_fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(["show", "a1", "--json"])
    out, err = capsys.readouterr()
    assert status == cli.EXIT_FLEET_ERROR
    reply = json.loads(out)
    assert reply["ok"] is False and reply["error"]["code"] == "not_running", reply
    assert reply["error"]["message"] in err


def test_a_usage_error_with_json_is_an_error_reply_on_stdout(
    no_fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["ls", "--json", "--no-such-flag"])
    assert exited.value.code == cli.EXIT_FLEET_ERROR
    reply = json.loads(capsys.readouterr().out)
    assert reply["error"]["code"] == "usage" and "--no-such-flag" in reply["error"]["message"]


def test_a_bug_with_json_names_its_id_and_the_log_holds_its_traceback(
    no_fleet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> object:
        raise RuntimeError("a bug in a command")

    monkeypatch.setattr(inbox, "json_schemas", broken)
    status = cli.main(["schema", "--json"])
    assert status == cli.EXIT_BUG
    reply = json.loads(capsys.readouterr().out)
    error_id = reply["error"]["error_id"]
    assert reply["error"]["code"] == "internal" and error_id in reply["error"]["message"]
    logged = errorlog.path_in(no_fleet).read_text()
    assert f"--- error {error_id} " in logged and "RuntimeError: a bug in a command" in logged


# -- what an agent's NATS user may publish, and its limits -------------------------------------


def test_an_agent_publishes_mail_and_topics_only_by_the_relay_as_itself() -> None:
    allowed = natsauth.agent_permissions("a1")["publish"]["allow"]
    assert subjects.mail_relay("a1") in allowed and subjects.topic_relay("a1") in allowed
    assert not [s for s in allowed if s.startswith(("fleet.mail.", "fleet.topic."))], allowed
    assert subjects.mail_relay("b1") not in allowed


def test_a_callout_user_carries_payload_and_subscription_limits() -> None:
    issuer = natscallout.issuer_from_seed(natscallout.new_seed())
    req = natscallout.AuthRequest("NSERVER", "UUSERKEY", "agent-a1", "pw", 7, "127.0.0.1")
    permissions = natsauth.agent_permissions("a1")
    response = natscallout.decode(natscallout.allow(req, issuer, "FLEET", permissions).decode())
    claims = natscallout.decode(response["nats"]["jwt"])["nats"]
    assert claims["payload"] == m.MAX_MESSAGE_BYTES + 16 * 1024
    assert claims["subs"] == 1_000 and claims["data"] == -1
    assert claims["pub"] == permissions["publish"]
