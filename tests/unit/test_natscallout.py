"""The auth callout's JWTs: what fleetd signs, and what it accepts as a server's request.

The exchange itself runs against a real nats-server in tests/fleet/test_security_nats.py
(`callout`); here, the pieces the server never shows us going wrong: forged, tampered and
malformed requests, and seeds of the wrong kind.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nkeys
import pytest

from infra import natsauth, natscallout
from infra.natscallout import AuthRequest, BadToken, CalloutKeyUnusable


def server_key() -> object:
    """A server's nkey pair (it signs its requests with one)."""
    seed = nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_SERVER)
    return nkeys.from_seed(seed)


def request_claims(server_id: str, **nats: object) -> dict[str, object]:
    body = {
        "server_id": {"id": server_id, "name": "n1"},
        "user_nkey": "UUSERKEY",
        "client_info": {"id": 7, "host": "127.0.0.1"},
        "connect_opts": {"user": "agent-a1", "pass": "pw"},
        "type": "authorization_request",
        "version": 2,
        **nats,
    }
    return {"aud": natscallout.REQUEST_AUDIENCE, "sub": "AISSUER", "nats": body}


def test_a_signed_request_is_read() -> None:
    server = server_key()
    server_id = natscallout.public_key(server)
    token = natscallout.encode(request_claims(server_id), server)
    req = natscallout.read_request(token.encode())
    assert req == AuthRequest(
        server_id=server_id,
        user_nkey="UUSERKEY",
        user="agent-a1",
        password="pw",
        client_id=7,
        host="127.0.0.1",
    )


def test_a_tampered_request_is_refused() -> None:
    server = server_key()
    token = natscallout.encode(request_claims(natscallout.public_key(server)), server)
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["nats"]["connect_opts"]["user"] = "agent-b1"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(BadToken, match="signature does not match"):
        natscallout.read_request(f"{head}.{forged}.{sig}".encode())


def test_a_request_signed_by_another_key_than_the_server_it_names_is_refused() -> None:
    other = natscallout.issuer_from_seed(natscallout.new_seed())
    token = natscallout.encode(request_claims(natscallout.public_key(server_key())), other)
    with pytest.raises(BadToken, match="not signed by the server it names"):
        natscallout.read_request(token.encode())


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "three dot-separated parts"),
        (b"not a jwt", "three dot-separated parts"),
        (b"a.b.c", "not base64url JSON"),
        (b"\xff\xfe.x.y", "not base64url JSON"),
    ],
)
def test_garbage_is_refused_with_a_sentence(data: bytes, why: str) -> None:
    with pytest.raises(BadToken, match=why):
        natscallout.read_request(data)


def test_a_response_or_user_jwt_is_not_taken_for_a_request() -> None:
    server = server_key()
    claims = request_claims(natscallout.public_key(server))
    claims["aud"] = "FLEET"
    with pytest.raises(BadToken, match="not an authorization request"):
        natscallout.read_request(natscallout.encode(claims, server).encode())
    wrong_types = request_claims(natscallout.public_key(server), user_nkey=42)
    with pytest.raises(BadToken, match="malformed"):
        natscallout.read_request(natscallout.encode(wrong_types, server).encode())


def test_an_allowed_agent_gets_its_permissions_in_a_user_jwt_for_the_asking_server() -> None:
    issuer = natscallout.issuer_from_seed(natscallout.new_seed())
    req = AuthRequest("NSERVER", "UUSERKEY", "agent-a1", "pw", 7, "127.0.0.1")
    permissions = natsauth.agent_permissions("a1")
    response = natscallout.decode(natscallout.allow(req, issuer, "FLEET", permissions).decode())
    assert response["iss"] == natscallout.public_key(issuer)
    assert response["aud"] == "NSERVER" and response["sub"] == "UUSERKEY"
    assert response["nats"]["type"] == "authorization_response"
    user = natscallout.decode(response["nats"]["jwt"])
    assert user["sub"] == "UUSERKEY" and user["aud"] == "FLEET" and user["name"] == "agent-a1"
    assert user["nats"]["pub"] == permissions["publish"]
    assert user["nats"]["sub"] == permissions["subscribe"]
    assert not any(s.startswith("fleet.evt.") for s in user["nats"]["pub"]["allow"])
    assert not any(s.startswith("fleet.cmd.") for s in user["nats"]["pub"]["allow"])


def test_a_refusal_carries_its_reason() -> None:
    issuer = natscallout.issuer_from_seed(natscallout.new_seed())
    req = AuthRequest("NSERVER", "UUSERKEY", "agent-zz", "pw", 7, "127.0.0.1")
    response = natscallout.decode(natscallout.refuse(req, issuer, "revoked").decode())
    assert response["nats"] == {"error": "revoked", "type": "authorization_response", "version": 2}


def test_seed_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(CalloutKeyUnusable, match="there is no such file"):
        natscallout.load_issuer(tmp_path / "missing")
    user_seed = nkeys.encode_seed(b"\x02" * 32, nkeys.PREFIX_BYTE_USER).decode()
    (tmp_path / "user.seed").write_text(user_seed)
    with pytest.raises(CalloutKeyUnusable, match="an account seed starts with 'SA'"):
        natscallout.load_issuer(tmp_path / "user.seed")
    (tmp_path / "broken.seed").write_text("SA" + "A" * 56)
    with pytest.raises(CalloutKeyUnusable, match="not a valid nkey seed"):
        natscallout.load_issuer(tmp_path / "broken.seed")
    (tmp_path / "good.seed").write_text(natscallout.new_seed() + "\n")
    assert natscallout.public_key(natscallout.load_issuer(tmp_path / "good.seed")).startswith("A")
