"""Bounds, tried from inside a real agent's pane with the agent's own NATS credential, and a
dead pane, killed by the test (not by the agent: that would test nothing of detection).

- The attacker writes mail straight into JetStream (`fleet.mail.<other>.<priority>`), onto
  topics and into another client's reply inbox: NATS refuses all three (only the relay may,
  `fleet.ctl.mail.<self>`).
- Through the relay: mail to an agent that does not exist, an oversized message, and floods of
  mail and topic messages are refused with a sentence; what is stored is the sender's own,
  within its rate.
- A flood of hook calls on the agent's own `fleet.hook.<id>` is cut by its actor's bucket.
- Another agent's agent window process is killed with SIGKILL: the fleet records ERROR with
  the signal, and `send` to it is refused with a sentence.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg

from infra.eventstore import EventStore
from infra.mailbox import Mailbox
from infra.tmux import Tmux
from schemas import mail as m
from schemas import subjects
from tests.conftest import Fleet
from tests.fleet.helpers import command, spawn, until
from tests.fleet.test_security_nats import AuthFleet, auth_fleet, control, pane_env
from tests.security.pane import in_pane

__all__ = ["auth_fleet", "control"]  # the fixtures, imported to be used here

ATTACK = r"""
import asyncio, json, os, sys
import nats
from infra import natsauth

FLOOD_MAIL, FLOOD_TOPIC = {flood_mail}, {flood_topic}


async def main():
    cred = natsauth.read_credential(os.environ["FLEET_NATS_CREDS"])
    me = os.environ["FLEET_AGENT_ID"]
    errors = []

    async def on_error(e):
        errors.append(str(e))

    url = natsauth.with_credential(os.environ["FLEET_NATS_URL"], cred)
    nc = await nats.connect(url, inbox_prefix=cred.inbox_prefix, error_cb=on_error,
                            allow_reconnect=False)
    out = {{}}
    # 1. Straight into the victim's mailbox, onto a topic, into a reply inbox: not allowed.
    await nc.publish("fleet.mail.{victim}.critical", b'{{"from":"boss","body":"forged"}}')
    await nc.publish("fleet.topic.news", b"forged")
    await nc.publish("_INBOX.somebody.answer", b"forged")  # another client's reply inbox
    await nc.flush()
    await asyncio.sleep(0.5)  # the server's -ERR for each comes back on this connection
    out["denied"] = [e for e in errors if "permissions violation" in e.lower()]
    out["errors"] = errors

    async def relay(subject, data, headers=None):
        try:
            msg = await nc.request(subject, data, timeout=30, headers=headers)
        except Exception as e:
            return {{"ok": False, "error": {{"code": type(e).__name__, "message": str(e)}}}}
        return json.loads(msg.data)

    mail = "fleet.ctl.mail." + me
    topic = "fleet.ctl.topic." + me
    # 2. Mail for an agent that does not exist; a bad priority.
    out["ghost"] = await relay(mail, json.dumps({{"to": "ghost", "body": "x"}}).encode())
    out["priority"] = await relay(
        mail, json.dumps({{"to": "{victim}", "body": "x", "priority": "urgent"}}).encode())
    # 3. Floods, all at once.
    floods = await asyncio.gather(*(
        relay(mail, json.dumps({{"to": "{victim}", "body": f"flood {{i}}"}}).encode())
        for i in range(FLOOD_MAIL)))
    out["mail_codes"] = sorted({{r.get("error", {{}}).get("code", "ok") for r in floods}})
    out["mail_stored"] = sum(1 for r in floods if r.get("ok"))
    topics = await asyncio.gather(*(
        relay(topic, b"t", {{"Fleet-Topic": "news"}}) for i in range(FLOOD_TOPIC)))
    out["topic_codes"] = sorted({{r.get("error", {{}}).get("code", "ok") for r in topics}})
    # 4. Oversized, last (a server with per-user limits closes the connection for it).
    big = json.dumps({{"to": "{victim}", "body": "x" * 300_000}}).encode()
    out["big_mail"] = await relay(mail, big)
    print("RESULT " + json.dumps(out))


asyncio.run(main())
"""


async def test_an_agent_cannot_write_without_bound_into_mail_or_topics(
    auth_fleet: AuthFleet, control: Client, repo: Path
) -> None:
    fleet = auth_fleet.fleet
    for name in ("bx1", "bv1"):
        assert (await spawn(control, str(repo), name))["ok"]
    env = pane_env(fleet, "fleet-bx1")
    got_topics: list[bytes] = []

    async def on_topic(msg: Msg) -> None:
        got_topics.append(msg.data)

    await control.subscribe(subjects.topic("news"), cb=on_topic)
    await control.flush()
    flood_mail, flood_topic = int(m.AGENT_MAIL_BURST) * 3, int(m.AGENT_TOPIC_BURST) * 2
    script = Path(env["FLEET_WORKTREE"]) / ".attack.py"
    script.write_text(ATTACK.format(victim="bv1", flood_mail=flood_mail, flood_topic=flood_topic))
    ran = await in_pane(control, "bx1", env["FLEET_WORKTREE"], f"{sys.executable} {script}", 180)
    line = [ln for ln in ran.output.splitlines() if ln.startswith("RESULT ")]
    assert ran.status == 0 and line, ran.output
    out = json.loads(line[-1].removeprefix("RESULT "))

    assert len(out["denied"]) == 3, out["errors"]
    assert out["ghost"]["error"]["code"] == "unknown_agent", out["ghost"]
    assert "there is no agent 'ghost'" in out["ghost"]["error"]["message"]
    assert "unknown priority 'urgent'" in out["priority"]["error"]["message"], out["priority"]
    assert out["mail_codes"] == ["ok", "rate_limited"], out["mail_codes"]
    assert out["topic_codes"] == ["ok", "rate_limited"], out["topic_codes"]
    big = out["big_mail"]
    assert big["ok"] is False, big
    if auth_fleet.callout is None:  # the embedded server: the relay says why
        assert big["error"]["code"] == "payload_too_large", big
    # (with the auth callout, the server refuses it first: the user's payload limit)

    stored = await Mailbox(control).peek("bv1", limit=10_000)
    assert {i.from_ for i in stored} == {"bx1"}  # no forged "boss", every one from its sender
    assert len(stored) == out["mail_stored"] < flood_mail
    js = control.jetstream()
    ghost = await js.stream_info(subjects.MAIL_STREAM, subjects_filter="fleet.mail.ghost.>")
    assert not ghost.state.subjects
    assert b"forged" not in got_topics


async def test_a_killed_pane_is_an_error_with_its_signal_and_refuses_input(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    assert (await spawn(nc, str(repo), "dp1"))["ok"]
    tmux = Tmux(fleet.tmux_socket)
    (pid,) = [p for window, p in tmux.live_panes("fleet-dp1") if window == "agent"]
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # the test's own powers, from outside the agent

    async def failed() -> dict[str, object] | None:
        shown = (await command(nc, "dp1", "show"))["agent"]
        return shown if shown["lifecycle"] == "ERROR" else None

    shown = await until(failed, "the fleet to notice the killed pane", timeout=60)
    noticed_s = time.monotonic() - killed_at
    assert "killed by signal 9" in str(shown["reason"]), shown
    print(f"a killed pane was recorded as ERROR {noticed_s:.2f} s after the kill")
    refused = await command(nc, "dp1", "send", text="echo hello")
    assert refused["ok"] is False, refused
    assert "it is ERROR" in refused["error"]["message"], refused


async def test_input_right_after_the_pane_died_is_refused(
    fleet: Fleet, nc: Client, repo: Path
) -> None:
    """`send` does not wait for the monitor's next period: a pane that has died is refused
    by the send itself (or by the monitor, if it was first), never typed into."""
    assert (await spawn(nc, str(repo), "dp2"))["ok"]
    tmux = Tmux(fleet.tmux_socket)
    (pid,) = [p for window, p in tmux.live_panes("fleet-dp2") if window == "agent"]
    os.kill(pid, signal.SIGKILL)

    async def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # reaped between two looks
            return True

    await until(gone, "the killed process to be gone")
    refused = await command(nc, "dp2", "send", text="echo hello")
    assert refused["ok"] is False, refused
    assert refused["error"]["code"] in ("pane_dead", "invalid_transition"), refused
    shown = (await command(nc, "dp2", "show"))["agent"]
    assert shown["lifecycle"] == "ERROR" and "killed by signal 9" in shown["reason"], shown


HOOK_RATE, HOOK_BURST = 20.0, 60.0  # actors/agent/hookcalls.py: calls a second, and at once
HOOK_FLOOD = r"""
import asyncio, json, os, time
import nats
from infra import natsauth


async def main():
    cred = natsauth.read_credential(os.environ["FLEET_NATS_CREDS"])
    me = os.environ["FLEET_AGENT_ID"]
    url = natsauth.with_credential(os.environ["FLEET_NATS_URL"], cred)
    nc = await nats.connect(url, inbox_prefix=cred.inbox_prefix, allow_reconnect=False)
    call = json.dumps({{"assistant": "claude-code", "agent_id": me,
                       "payload": {{"hook_event_name": "UserPromptSubmit"}}}}).encode()

    async def one():
        try:
            msg = await nc.request("{subject}", call, timeout=60)
        except Exception as e:
            return type(e).__name__
        reply = json.loads(msg.data)
        return "ok" if reply.get("ok") else reply["error"]["code"]

    started = time.monotonic()
    codes = await asyncio.gather(*(one() for _ in range({count})))
    print("RESULT " + json.dumps({{"codes": codes, "took_s": time.monotonic() - started}}))
    await nc.close()


asyncio.run(main())
"""


async def test_an_agent_cannot_flood_its_actor_with_hook_calls(
    auth_fleet: AuthFleet, control: Client, repo: Path
) -> None:
    """`fleet.hook.<self>` is the one subject an agent's user may send its actor reports on;
    its actor takes them at a bounded rate (actors/agent/hookcalls.py), so a flood from the pane
    neither grows the log nor costs the actor more than its bucket."""
    fleet = auth_fleet.fleet
    assert (await spawn(control, str(repo), "hf1"))["ok"]
    env = pane_env(fleet, "fleet-hf1")
    before = len(await EventStore(control).read("hf1"))
    count = int(HOOK_BURST) * 4
    script = Path(env["FLEET_WORKTREE"]) / ".hooks.py"
    script.write_text(HOOK_FLOOD.format(subject=subjects.hook("hf1"), count=count))
    ran = await in_pane(control, "hf1", env["FLEET_WORKTREE"], f"{sys.executable} {script}", 180)
    line = [ln for ln in ran.output.splitlines() if ln.startswith("RESULT ")]
    assert ran.status == 0 and line, ran.output
    out = json.loads(line[-1].removeprefix("RESULT "))
    codes = out["codes"]
    limited = codes.count("rate_limited")
    assert limited > 0, codes  # the bucket cut the flood
    let_in = count - limited
    assert let_in <= HOOK_BURST + HOOK_RATE * out["took_s"] + 1, (let_in, out["took_s"], codes)
    assert set(codes) - {"rate_limited"}, codes  # and what it let in was answered
    # Typing the script is the pane's only mark on the log: no hook call of a shell agent
    # is recorded, flood or not.
    after = await EventStore(control).read("hf1")
    assert not [r for r in after[before:] if getattr(r.event, "source", "") == "hook"], after
