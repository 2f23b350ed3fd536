"""Auth callout: per-agent NATS users on a NATS that fleetd does not run (`FLEET_NATS_URL`).

fleetd cannot write the config of an operator's nats-server, so it cannot add a user per
agent there. nats-server (2.10+) can instead ask a service about every client that connects:

    authorization { auth_callout {
        issuer: <account public nkey>   # `fleet nats-callout-key` makes one
        account: FLEET                  # the account fleet's control user is in
        auth_users: [fleet, sys]        # these log in as configured, without the callout
    } }

The server sends each other CONNECT to `$SYS.REQ.USER.AUTH` in that account: a JWT (an
"authorization request", signed by the server's own nkey) with the user and password the
client gave, the client's id, and a fresh user nkey the server made for it. The answer is an
"authorization response" JWT signed by the issuer's seed (`FLEET_NATS_CALLOUT_SEED_FILE`):
either a user JWT (subject: that user nkey; audience: the account to put the client in; the
permissions it gets) or an error, which the server logs and the client sees as
'Authorization Violation'. So an agent's credential works exactly as with the embedded server
(the same user, password and permissions; infra/natsauth.py), and nothing fleetd issues
outlives `fleet up`'s knowledge of it.

Revoking a user forgets it (the next connect is refused) and closes its live connections,
which takes the system account (`FLEET_NATS_SYSTEM_URL`): `$SYS.REQ.SERVER.PING.CONNZ`
filtered by user and account finds them on every server of a cluster, and
`$SYS.REQ.SERVER.<server id>.KICK` with `{"cid": N}` closes each.

JWTs here are nkey JWTs: base64url (no padding) of a header `{"typ":"JWT","alg":"ed25519-nkey"}`,
of the claims, and of the ed25519 signature of the first two parts joined by a dot.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import msgspec
import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.errors import FleetError
from schemas.mail import MAX_MESSAGE_BYTES

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
REQUEST_AUDIENCE = "nats-authorization-request"
CONNZ_SUBJECT = "$SYS.REQ.SERVER.PING.CONNZ"
USER_INFO_SUBJECT = "$SYS.REQ.USER.INFO"
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
CONNZ_QUIET_S = 0.3  # a cluster's servers answer a ping within ms; this long of none ends it
CONNZ_LIMIT_S = 2.0


class CalloutKeyUnusable(FleetError):
    """The issuer's seed file is missing or holds no account seed."""

    code = "callout_key_unusable"

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"the auth callout seed file {path} cannot be used: {why}")


class BadToken(FleetError):
    """A JWT that is not well formed, not signed by its issuer, or not of the expected kind."""

    code = "bad_token"


# -- keys ----------------------------------------------------------------------------------------


def new_seed() -> str:
    """A new account seed ("SA..."): the issuer's private half, to keep in a 0600 file."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT)).decode()


def issuer_from_seed(seed: str) -> Any:
    """The issuer's key pair from an account seed, or BadToken saying why not."""
    text = seed.strip()
    if not text.startswith("SA"):
        raise BadToken(
            "an account seed starts with 'SA' (a user seed starts 'SU', an operator's 'SO')"
        )
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
        if len(raw) != 36 or nkeys.crc16(bytearray(raw[:-2])) != int.from_bytes(raw[-2:], "little"):
            raise ValueError("its checksum does not match")  # nkeys does not check it
        return nkeys.from_seed(text.encode())
    except (nkeys.ErrInvalidSeed, nkeys.ErrInvalidPrefixByte, ValueError) as e:
        raise BadToken(f"it is not a valid nkey seed ({e or type(e).__name__})") from e


def load_issuer(path: Path) -> Any:
    """The issuer's key pair from `FLEET_NATS_CALLOUT_SEED_FILE`, or one sentence saying why not."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CalloutKeyUnusable(path, "there is no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalloutKeyUnusable(path, str(getattr(e, "strerror", None) or e)) from e
    try:
        return issuer_from_seed(text)
    except BadToken as e:
        raise CalloutKeyUnusable(path, str(e)) from e


def public_key(pair: Any) -> str:
    return bytes(pair.public_key).decode()


def _verify_key(public: str) -> VerifyKey:
    """The ed25519 key inside an nkey public key (base32: prefix byte, 32 bytes, crc16)."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (ValueError, TypeError) as e:
        raise BadToken(f"the issuer {public!r} is not an nkey") from e
    if len(raw) != 35:
        raise BadToken(f"the issuer {public!r} is not an nkey")
    return VerifyKey(raw[1:33])


# -- JWTs ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], issuer: Any) -> str:
    """Sign `claims` (iss, iat and jti are filled in) as an nkey JWT."""
    body = {**claims, "iss": public_key(issuer), "iat": int(time.time())}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest())
    body["jti"] = body["jti"].decode().rstrip("=")
    signed = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT signed by the key its `iss` names, or BadToken."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise BadToken("a JWT has three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except ValueError as e:
        raise BadToken(f"the JWT is not base64url JSON ({e})") from e
    if not isinstance(header, dict) or header.get("alg") not in ("ed25519-nkey", "ed25519"):
        raise BadToken("the JWT is not signed with an nkey")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise BadToken("the JWT names no issuer")
    try:
        _verify_key(claims["iss"]).verify(f"{parts[0]}.{parts[1]}".encode(), signature)
    except (BadSignatureError, ValueError) as e:
        raise BadToken("the JWT's signature does not match its issuer") from e
    return claims


# -- the callout exchange ------------------------------------------------------------------------


class _ServerId(msgspec.Struct):
    id: str


class _ClientInfo(msgspec.Struct):
    id: int = 0
    host: str = ""


class _ConnectOpts(msgspec.Struct):
    user: str = ""
    password: str = msgspec.field(default="", name="pass")


class _RequestBody(msgspec.Struct):
    server_id: _ServerId
    user_nkey: str
    client_info: _ClientInfo = msgspec.field(default_factory=_ClientInfo)
    connect_opts: _ConnectOpts = msgspec.field(default_factory=_ConnectOpts)
    type: str = ""


class AuthRequest(msgspec.Struct, frozen=True):
    """What the server asks about one connecting client."""

    server_id: str  # the asking server's public nkey: the response's audience
    user_nkey: str  # the nkey the server made for this client: the user JWT's subject
    user: str
    password: str
    client_id: int
    host: str


def read_request(data: bytes) -> AuthRequest:
    """An authorization request from a server, or BadToken (unsigned, wrong kind, malformed)."""
    claims = decode(data.decode(errors="replace"))
    if claims.get("aud") != REQUEST_AUDIENCE:
        raise BadToken("the JWT is not an authorization request")
    try:
        body = msgspec.convert(claims.get("nats"), _RequestBody)
    except msgspec.ValidationError as e:
        raise BadToken(f"the authorization request is malformed ({e})") from e
    if body.type != "authorization_request" or claims["iss"] != body.server_id.id:
        raise BadToken("the authorization request is not signed by the server it names")
    return AuthRequest(
        server_id=body.server_id.id,
        user_nkey=body.user_nkey,
        user=body.connect_opts.user,
        password=body.connect_opts.password,
        client_id=body.client_info.id,
        host=body.client_info.host,
    )


def jwt_permissions(config_permissions: dict[str, Any]) -> dict[str, Any]:
    """Server-config permissions (`publish`/`subscribe`) in a user JWT's terms (`pub`/`sub`)."""
    return {
        "pub": config_permissions.get("publish", {}),
        "sub": config_permissions.get("subscribe", {}),
    }


# An agent's connection limits (the user JWT's NatsLimits, beside its permissions): each
# message at most `payload` bytes, headers included (the largest an agent needs to send is a
# mail request to the relay, MAX_MESSAGE_BYTES; the relay refuses more with a sentence, and
# the client checks before it sends), at most `subs` subscriptions, no cap on bytes in all
# (`data`: -1; the relay's rates bound what an agent's messages cost others).
AGENT_LIMITS: dict[str, int] = {"payload": MAX_MESSAGE_BYTES + 16 * 1024, "subs": 1_000, "data": -1}


def allow(
    req: AuthRequest,
    issuer: Any,
    account: str,
    permissions: dict[str, Any],
    limits: dict[str, int] | None = None,
) -> bytes:
    """The response that lets the client in as `req.user`, in `account`, with `permissions`
    and `limits` (AGENT_LIMITS unless given: every user the callout lets in is an agent)."""
    nats_claims = {
        **jwt_permissions(permissions),
        **(AGENT_LIMITS if limits is None else limits),
        "type": "user",
        "version": 2,
    }
    user = encode(
        {"sub": req.user_nkey, "name": req.user, "aud": account, "nats": nats_claims}, issuer
    )
    return _respond(req, issuer, {"jwt": user})


def refuse(req: AuthRequest, issuer: Any, why: str) -> bytes:
    """The response that keeps the client out; the server logs `why`."""
    return _respond(req, issuer, {"error": why})


def _respond(req: AuthRequest, issuer: Any, outcome: dict[str, str]) -> bytes:
    claims = {
        "sub": req.user_nkey,
        "aud": req.server_id,
        "nats": {**outcome, "type": "authorization_response", "version": 2},
    }
    return encode(claims, issuer).encode()


# -- the system account: who am I, and closing a user's connections ------------------------------


async def account_of(nc: Client) -> str:
    """The account `nc`'s user is in (`$SYS.REQ.USER.INFO` answers any user about itself)."""
    msg = await nc.request(USER_INFO_SUBJECT, b"", timeout=5)
    try:
        account = json.loads(msg.data)["data"]["account"]
    except (ValueError, KeyError, TypeError) as e:
        raise FleetError(
            f"NATS did not say which account fleet's user is in: {msg.data[:200]!r}"
        ) from e
    return str(account)


async def kick(system: Client, user: str, account: str) -> int:
    """Close every connection of `user` in `account` on every server; how many were closed."""
    inbox = system.new_inbox()
    found: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await system.subscribe(inbox, cb=found.put)
    try:
        ask = json.dumps({"user": user, "acc": account}).encode()
        await system.publish(CONNZ_SUBJECT, ask, reply=inbox)
        targets = await _collect(found)
    finally:
        await sub.unsubscribe()
    closed = 0
    for server_id, cid in targets:
        reply = await system.request(
            f"$SYS.REQ.SERVER.{server_id}.KICK", json.dumps({"cid": cid}).encode(), timeout=5
        )
        closed += "error" not in json.loads(reply.data)
    return closed


async def _collect(found: asyncio.Queue[Msg]) -> list[tuple[str, int]]:
    """(server id, client id) of each connection in the CONNZ answers that arrive."""
    targets: list[tuple[str, int]] = []
    deadline = time.monotonic() + CONNZ_LIMIT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(found.get(), timeout=min(CONNZ_QUIET_S, left))
        except TimeoutError:
            break
        answer = json.loads(msg.data)
        server_id = answer.get("server", {}).get("id", "")
        for conn in (answer.get("data") or {}).get("connections") or []:
            targets.append((server_id, int(conn["cid"])))
    return targets
