"""Which environment values are secret, and their redaction: pure, used wherever env is shown.

A variable is secret when its name looks like one (`*_TOKEN`, `*_KEY`, `*_SECRET`,
`*PASSWORD*`, API keys, credentials) or the template lists it under `permissions.secrets`.
Secret values reach the agent's processes (the pane environment) but never the event log:
the template an agent records in `agent.created` has them replaced by `REDACTED`, and the
real ones are kept apart (infra/secretstore.py, KV bucket `SECRETS_BUCKET`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import msgspec

from schemas.templates import Template

REDACTED = "***"
# Kept here rather than in subjects.BUCKETS while that file is being changed by the credentials
# work; agents' NATS users must not be allowed `$KV.fleet_secrets.>`.
SECRETS_BUCKET = "fleet_secrets"

_SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|KEY|SECRET|SECRETS|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|APIKEY|PAT)(_|$)"
    r"|PASSWORD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY",
    re.IGNORECASE,
)


def is_secret(name: str, declared: Iterable[str] = ()) -> bool:
    """Whether the variable `name` holds a secret (by its name, or declared by the template)."""
    return name in set(declared) or _SECRET_NAME.search(name) is not None


def redact_env(env: Mapping[str, str], declared: Iterable[str] = ()) -> dict[str, str]:
    declared = tuple(declared)
    return {k: REDACTED if is_secret(k, declared) else v for k, v in env.items()}


def redact_template(t: Template) -> Template:
    """The template with every secret env value (top level, assistant, services) redacted."""
    declared = t.permissions.secrets
    services = {
        name: msgspec.structs.replace(spec, env=redact_env(spec.env, declared))
        for name, spec in t.services.items()
    }
    assistant = msgspec.structs.replace(t.assistant, env=redact_env(t.assistant.env, declared))
    return msgspec.structs.replace(
        t, env=redact_env(t.env, declared), assistant=assistant, services=services
    )


def secret_values(t: Template | None, extra: Mapping[str, str] | None = None) -> list[str]:
    """The values to scrub from text that may be shown: every secret of the template and
    every value given at spawn (all of which are kept out of the log)."""
    found = [v for k, v in (extra or {}).items()]
    if t is not None:
        declared = t.permissions.secrets
        envs = [t.env, t.assistant.env, *(s.env for s in t.services.values())]
        found += [v for env in envs for k, v in env.items() if is_secret(k, declared)]
    return sorted({v for v in found if len(v) >= 4}, key=len, reverse=True)


def scrub(text: str, values: Iterable[str]) -> str:
    """`text` with each of `values` replaced by `REDACTED` (for reasons, output, logs)."""
    for value in values:
        text = text.replace(value, REDACTED)
    return text
