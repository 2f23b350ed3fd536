"""A nats-server you run, set up as infra/deploy/README.md says for agents' own users: the
guide's auth.conf (fleet's user in account FLEET, a system user, the auth callout), its values
from the server's environment, and the issuer's seed in a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import natsauth, natscallout
from infra.natsserver import NatsServer

AUTH_CONF = Path(__file__).resolve().parents[2] / "infra/deploy/nats/auth.conf"


@dataclass(frozen=True)
class CalloutNats:
    server: NatsServer
    control: natsauth.Credential  # fleet's own user (an auth user: no callout)
    system: natsauth.Credential  # the system account's user
    seed_file: Path

    def settings(self) -> dict[str, str]:
        """What points `fleet up` at this server, with agents' users through the callout."""
        return {
            "FLEET_NATS_URL": natsauth.with_credential(self.server.url, self.control),
            "FLEET_NATS_SYSTEM_URL": natsauth.with_credential(self.server.url, self.system),
            "FLEET_NATS_CALLOUT_SEED_FILE": str(self.seed_file),
        }


def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed_file: Path) -> CalloutNats:
    """The server, whose callout issuer is the key in `seed_file`; the caller stops it."""
    issuer = natscallout.public_key(natscallout.load_issuer(seed_file))
    control = natsauth.Credential(user="fleet", password=natsauth.new_password())
    system = natsauth.Credential(user="sys", password=natsauth.new_password())
    monkeypatch.setenv("FLEET_CALLOUT_ISSUER", issuer)
    monkeypatch.setenv("FLEET_NATS_PASSWORD", control.password)
    monkeypatch.setenv("FLEET_NATS_SYSTEM_PASSWORD", system.password)
    server = NatsServer.start(tmp_path / "nats", config=AUTH_CONF)
    return CalloutNats(server, control, system, seed_file)
