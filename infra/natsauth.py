"""NATS users of the embedded server: the control plane's, and one per agent with permissions.

`fleet up` runs its nats-server with `--config <state_dir>/nats-auth/server.conf`, which this
module writes: an `authorization { users = [...] }` block with bcrypt hashes only (never a
password). The files under `<state_dir>/nats-auth/` (directory 0700, files 0600):

- `control.json`: the control plane's credential (fleet up, the supervisor, agent actors,
  services, the gateway, the CLI). No permissions block: it may do everything.
- `users/<agent>.json`: an agent's user name and bcrypt hash (the server config is rebuilt
  from these on every change, so no hash is computed twice).
- `agents/<agent>.json`: the agent's own credential, which its processes find through
  `FLEET_NATS_CREDS`; written by its actor, removed at stop.
- `server.conf`: the rendered config (JSON, which nats-server's config parser reads as is).

Protocol facts: nats-server re-reads its config on SIGHUP (`nats-server --signal reload=<pid>`
sends the same); a user that is gone after a reload is disconnected, and changed permissions
apply to live connections. A publish that permissions deny is dropped and the client gets
`-ERR 'Permissions Violation for Publish to "<subject>"'` (nats-py hands it to its error
callback); a denied subscription likewise. Permission subjects are whole tokens, so an agent's
reply inbox gets a prefix of its own (`_INBOX.agent-<id>`, nats-py's `inbox_prefix`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import bcrypt
import msgspec

from schemas import subjects
from schemas.errors import FleetError

log = logging.getLogger(__name__)
AUTH_DIR_NAME = "nats-auth"
CONTROL_USER = "fleet-control"
CANARY_USER = "fleet-reload"  # no permissions at all; its fresh password proves a reload
AGENT_USER_PREFIX = "agent-"
# Passwords are 256-bit random tokens, so the work factor is not what protects them; it is the
# server's CPU per connect and per connected client at every reload (cost 4: ~1 ms, 8: ~12 ms).
BCRYPT_ROUNDS = 4
CANARY_ROUNDS = 4
JS_API = "$JS.API"
JS_ACK = "$JS.ACK"
INBOX = "_INBOX"


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """A user and password for the NATS server; `inbox_prefix` set for agents only."""

    user: str
    password: str
    inbox_prefix: str = ""  # "": nats-py's default `_INBOX`


class CredentialsUnusable(FleetError):
    """A credentials file that is missing or cannot be read."""

    code = "credentials_unusable"

    def __init__(self, path: str, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"the NATS credentials file {path} cannot be used: {why}")


# -- names and permissions -----------------------------------------------------------------------


def agent_user(agent_id: str) -> str:
    return AGENT_USER_PREFIX + subjects.token(agent_id)


def agent_inbox(agent_id: str) -> str:
    """The agent's reply-inbox prefix. NUIDs never hold '-', so no other client's inbox
    (`_INBOX.<nuid>`) can fall under it."""
    return f"{INBOX}.{AGENT_USER_PREFIX}{subjects.token(agent_id)}"


def agent_permissions(agent_id: str) -> dict[str, Any]:
    """What one agent may do: read its own commands and mail (through its own durable
    consumers only), send mail and topic messages by the relay, and receive replies (never
    publish one: no `_INBOX.>`). Never write an event log, its own neither: the actor is its
    log's one writer, and anything the agent's processes are to report must reach the actor
    as a command that the actor checks."""
    a = subjects.token(agent_id)
    stream = subjects.MAIL_STREAM
    mailbox: list[str] = []
    for priority in subjects.PRIORITIES:
        consumer = subjects.mail_consumer(a, priority)
        mailbox += [
            # the create form that names the filter: the server checks it against the config
            f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.{subjects.mail(a, priority)}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}",
            f"{JS_ACK}.{stream}.{consumer}.>",
        ]
    # No `fleet.evt.<a>`: only the agent's actor (the control plane) appends to its log.
    # Mail, answers to mail and topic messages only by the relay, as itself:
    # actors/supervisor/mailrelay.py checks each (recipient, priority, size, rate) and stores or
    # sends it on. No `_INBOX.>`: a reply subject seen in a command would let it forge answers to
    # the control plane's requests.
    # Its assistant's hooks report by a request on its own `fleet.hook.<a>` (actors/agent/monitor.py
    # checks each and records what it says; the reply comes to its own inbox).
    publish = [subjects.mail_relay(a), subjects.topic_relay(a), subjects.hook(a)]
    subscribe = [
        subjects.command(a),
        subjects.mailbox(a),
        subjects.topic(">"),
        f"{agent_inbox(a)}.>",
    ]
    return {"publish": {"allow": publish + mailbox}, "subscribe": {"allow": subscribe}}


def new_password() -> str:
    """A letter, then 48 hex digits: safe in a URL as is, and read as a string wherever
    nats-server's config parser meets it. An unquoted `$VAR` in a config (the deployment
    guide's auth.conf) is lexed by its value: one that starts with digits and a '-' is taken
    for a date and the server does not start ("ISO8601 dates must be in full Zulu form"),
    which a token_urlsafe password did now and then (a digit and a "-" first: ~1 in 400)."""
    return "p" + secrets.token_hex(24)


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    """bcrypt with the `$2a$` prefix, the one every nats-server version accepts."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds, prefix=b"2a")).decode()


def password_matches(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:  # not a bcrypt hash
        return False


# -- URLs ----------------------------------------------------------------------------------------


def _each(url: str, change: Any) -> str:
    """Apply `change` to every URL of a comma-separated list (a cluster's `FLEET_NATS_URL`)."""
    return ",".join(change(part.strip()) for part in url.split(","))


def with_credential(url: str, cred: Credential | None) -> str:
    """`url` with the credential as its userinfo (nats-py reads user and password from it)."""
    if cred is None:
        return url
    userinfo = f"{quote(cred.user, safe='')}:{quote(cred.password, safe='')}"

    def one(part: str) -> str:
        parts = urlsplit(without_userinfo(part))
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))

    return _each(url, one)


def without_userinfo(url: str) -> str:
    """`url` with any user and password taken out: what may be shown or handed to an agent."""

    def one(part: str) -> str:
        parts = urlsplit(part)
        if "@" not in parts.netloc:
            return part
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    return _each(url, one)


def userinfo_of(url: str) -> Credential | None:
    """The user and password in (the first of) `url`, if it holds any."""
    parts = urlsplit(url.split(",", 1)[0].strip())
    if parts.username is None:
        return None
    return Credential(user=unquote(parts.username), password=unquote(parts.password or ""))


# -- private files -------------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 (the temp file is made 0600 before anything is in it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_credential(path: Path, cred: Credential) -> None:
    write_private(path, msgspec.json.encode(cred) + b"\n")


def read_credential(path: str | Path) -> Credential:
    """A credentials file (JSON: user, password, inbox_prefix), or one sentence saying why not."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CredentialsUnusable(str(path), "there is no such file") from None
    except OSError as e:
        raise CredentialsUnusable(str(path), e.strerror or str(e)) from e
    try:
        return msgspec.json.decode(raw, type=Credential)
    except msgspec.DecodeError as e:
        raise CredentialsUnusable(str(path), f"it is not a fleetd credentials file ({e})") from e


def remove_file(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False


class AuthDir:
    """`<state_dir>/nats-auth`: the users of the embedded server and its rendered config."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, state_dir: str | Path) -> AuthDir:
        return cls(Path(state_dir) / AUTH_DIR_NAME)

    @property
    def config_path(self) -> Path:
        return self.root / "server.conf"

    @property
    def control_path(self) -> Path:
        return self.root / "control.json"

    @property
    def external_path(self) -> Path:
        """The operator's credential for a NATS that fleetd does not run (`FLEET_NATS_URL`)."""
        return self.root / "external.json"

    def agent_creds_path(self, agent_id: str) -> Path:
        """Where an agent's own credential goes (`FLEET_NATS_CREDS`)."""
        return self.root / "agents" / f"{subjects.token(agent_id)}.json"

    def _user_path(self, agent_id: str) -> Path:
        return self.root / "users" / f"{subjects.token(agent_id)}.json"

    def control(self) -> Credential:
        """The control plane's credential, made once (`O_EXCL`: two racing makers agree)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        cred = Credential(user=CONTROL_USER, password=new_password())
        try:
            fd = os.open(self.control_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_credential(self.control_path)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(cred) + b"\n")
        return cred

    def add_agent(self, agent_id: str, password_hash: str) -> None:
        """Record an agent's user (its hash only); `write_config` then puts it in the server's."""
        if not password_hash.startswith("$2"):
            raise FleetError(f"the password of agent {agent_id} must come bcrypt-hashed")
        entry = {"agent_id": subjects.token(agent_id), "hash": password_hash}
        write_private(self._user_path(agent_id), json.dumps(entry).encode())

    def remove_agent(self, agent_id: str) -> bool:
        """Forget an agent's user; True if it had one."""
        return remove_file(self._user_path(agent_id))

    def agent_hash(self, agent_id: str) -> str | None:
        """The bcrypt hash of the agent's current password, or None if it holds no user."""
        try:
            entry = json.loads(self._user_path(agent_id).read_bytes())
            return str(entry["hash"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning(
                "NATS user file of agent %s unreadable (%s); it cannot connect", agent_id, e
            )
            return None

    def agents(self) -> dict[str, str]:
        """agent id -> bcrypt hash, of every agent that holds a user now."""
        found: dict[str, str] = {}
        for path in sorted((self.root / "users").glob("*.json")):
            try:
                entry = json.loads(path.read_bytes())
                found[subjects.token(entry["agent_id"])] = str(entry["hash"])
            except (OSError, ValueError, KeyError, TypeError) as e:  # one bad file: that user only
                log.warning("NATS user file %s skipped (%s); that agent cannot connect", path, e)
        return found

    def write_config(self, canary_password: str) -> None:
        """Render every user into `server.conf` (atomically: a reload never reads half)."""
        # The control plane's password in plain: it sits in control.json beside this file with
        # the same mode, so a hash would hide nothing, and nats-server checks every connected
        # client again at each reload: a bcrypt check per control connection (one per agent
        # actor) made each grant cost seconds at 200 agents.
        users: list[dict[str, Any]] = [
            {"user": CONTROL_USER, "password": self.control().password},
            {
                "user": CANARY_USER,
                "password": hash_password(canary_password, CANARY_ROUNDS),
                "permissions": {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}},
            },
        ]
        for agent_id, hashed in self.agents().items():
            users.append(
                {
                    "user": agent_user(agent_id),
                    "password": hashed,
                    "permissions": agent_permissions(agent_id),
                }
            )
        text = json.dumps({"authorization": {"users": users}}, indent=1)
        write_private(self.config_path, text.encode() + b"\n")
