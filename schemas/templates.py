"""The template format: what an agent runs, with which dev services, ports, limits and recovery.

Templates are YAML decoded into these Structs by msgspec; unknown fields are refused, so a typo
is an error that names the field path, never a silently ignored setting. `extends` names a
parent template whose fields this one overrides (resolved by the templates loader).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class HttpProbe(_Spec, frozen=True):
    port: int | str  # a number, or the name of one of the service's leased ports
    path: str = "/"
    host: str = "127.0.0.1"
    expect_status: tuple[int, ...] = (200, 299)  # an inclusive range (low, high) of statuses


class TcpProbe(_Spec, frozen=True):
    port: int | str
    host: str = "127.0.0.1"


class ExecProbe(_Spec, frozen=True):
    command: list[str] | str  # argv, or an explicit shell string
    expect_exit: int = 0


class LogProbe(_Spec, frozen=True):
    pattern: str  # a regex matched against the service's output


class Probe(_Spec, frozen=True):
    """Exactly one of http / tcp / exec / log, with the timing Kubernetes users expect."""

    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    exec: ExecProbe | None = None
    log: LogProbe | None = None
    initial_delay_s: float = 0.0
    period_s: float = 1.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


class Backoff(_Spec, frozen=True):
    initial_s: float = 0.1
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1  # a fraction of the delay, added at random


class RestartSpec(_Spec, frozen=True):
    policy: Literal["no", "on-failure", "always"] = "on-failure"
    backoff: Backoff = Backoff()
    reset_after_s: float = 30.0  # a run this long resets the backoff and the restart count
    max_restarts: int = 10  # then the service is left down and recovery escalates


class ShutdownSpec(_Spec, frozen=True):
    signal: str = "SIGTERM"
    timeout_s: float = 5.0


DependsOn = Literal["started", "healthy", "completed"]


class ServiceSpec(_Spec, frozen=True):
    command: list[str] | str  # argv, or an explicit shell string
    cwd: str = "."  # relative to the worktree
    env: dict[str, str] = {}
    ports: tuple[str, ...] = ()  # names of ports to lease: PORT_<NAME>, and PORT for the first
    depends_on: dict[str, DependsOn] = {}
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    restart: RestartSpec = RestartSpec()
    shutdown: ShutdownSpec = ShutdownSpec()


class AssistantSpec(_Spec, frozen=True):
    command: str = "bash --noprofile --norc -i"
    env: dict[str, str] = {}
    profile: str = "shell"  # the built-in profile (schemas.builtin_profiles) to start from
    patterns: dict[str, tuple[str, ...]] = {}  # per activity, overriding the profile's
    quit_text: str | None = None
    quit_keys: tuple[str, ...] | None = None


class WorkspaceSpec(_Spec, frozen=True):
    base_ref: str = "HEAD"
    setup: tuple[str, ...] = ()  # shell commands run in the worktree before the assistant
    copy: tuple[str, ...] = ()  # files copied from the main checkout (e.g. ".env")


class Resources(_Spec, frozen=True):
    cpu: float | None = None  # cores
    memory_mb: int | None = None
    pids: int | None = None
    max_lifetime_s: float | None = None
    on_exceed: Literal["warn", "restart", "stop"] = "warn"
    # Placement on a Ray cluster: custom resources the agent's node must offer, e.g.
    # {"gpu-box": 1} or Ray's own {"node:10.0.0.5": 0.01}; its actor asks Ray for them, so the
    # session, ports and services are on such a node.
    ray: dict[str, float] = {}
    reserve: bool = False  # also reserve `cpu` and `memory_mb` there (Ray num_cpus and memory)


class Permissions(_Spec, frozen=True):
    env_passthrough: tuple[str, ...] = ()  # names of the host's variables the agent may see
    paths: tuple[str, ...] = ()  # paths outside the worktree the agent may use
    # Files and folders of your home (relative to it, e.g. ".claude.json") that the agent's own
    # home starts with: copied in when it is first made, for an assistant's login. The rest of
    # your home stays out of its reach.
    home: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()  # variables to pass but never show (redacted in events, logs)
    # TCP ports the agent may connect to besides NATS and its own (Landlock ABI 4+).
    connect_ports: tuple[int, ...] = (22, 80, 443)


class RecoverySpec(_Spec, frozen=True):
    """The ladder the health service climbs; each rung tried `attempts` times before the next."""

    rungs: tuple[
        Literal[
            "restart_service", "recreate_session", "new_ports", "rollback", "respawn", "ask_human"
        ],
        ...,
    ] = ("restart_service", "recreate_session", "new_ports", "respawn", "ask_human")
    attempts: int = 2
    backoff: Backoff = Backoff(initial_s=1.0, max_s=60.0)


class CheckpointSpec(_Spec, frozen=True):
    on_stop: bool = True
    on_unhealthy: bool = True
    every_working_min: float = 0.0  # 0: off


class Template(_Spec, frozen=True):
    name: str
    extends: str | None = None
    description: str = ""
    assistant: AssistantSpec = AssistantSpec()
    services: dict[str, ServiceSpec] = {}
    workspace: WorkspaceSpec = WorkspaceSpec()
    env: dict[str, str] = {}
    permissions: Permissions = Permissions()
    resources: Resources = Resources()
    recovery: RecoverySpec = RecoverySpec()
    checkpoints: CheckpointSpec = CheckpointSpec()
    capabilities: tuple[str, ...] = ()


# -- what the templates service stores and answers ----------------------------------------------


class StoredTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a template in KV `fleet_templates`: the YAML as applied and its resolution."""

    name: str
    version: int  # 1, 2, ... per name; an agent records the one it was spawned from
    source: str  # the YAML text as applied (what `show` prints and `diff` compares)
    spec: Template  # resolved: `extends` applied, checked
    file: str = ""  # the file it was applied from, for sentences
    parents: dict[str, int] = {}  # each template it extends -> the version used
    builtin: bool = False
    applied_at: datetime | None = None
    by: str = ""


class TemplateRequest(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="op", forbid_unknown_fields=True
):
    """`fleet.ctl.templates`: `{"op": "apply" | "ls" | "show" | "diff", ...}`."""

    by: str = ""
    id: str = ""


class ApplyTemplate(TemplateRequest, frozen=True, tag="apply"):
    source: str  # YAML text
    file: str = ""  # named in error sentences


class ListTemplates(TemplateRequest, frozen=True, tag="ls"):
    pass


class ShowTemplate(TemplateRequest, frozen=True, tag="show"):
    name: str
    version: int = 0  # 0: the latest


class DiffTemplate(TemplateRequest, frozen=True, tag="diff"):
    name: str
    v1: int = 0  # 0: the version before v2
    v2: int = 0  # 0: the latest


TemplateOp = ApplyTemplate | ListTemplates | ShowTemplate | DiffTemplate

_spec_decoder = msgspec.json.Decoder(Template)


def encode_spec(template: Template) -> str:
    """The resolved template as the JSON an agent records in `agent.created`."""
    return msgspec.json.encode(template).decode()


def decode_spec(raw: str) -> Template | None:
    """The template an agent recorded; None for agents recorded before templates were kept."""
    return _spec_decoder.decode(raw) if raw else None
