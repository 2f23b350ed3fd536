"""Configuration from the environment, and the state file through which `fleet up` is found.

fleetd is configured only by environment variables, so the same settings reach the CLI, the
services and Ray workers without a config file to ship around. `fleet up` writes where
everything listens to `<state_dir>/fleet.json`; every other command reads it from there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psutil

from schemas.errors import InvalidSetting, NotRunning

DEFAULT_GATEWAY_PORT = 7070
STATE_FILE_NAME = "fleet.json"
LOCK_FILE_NAME = "fleet.lock"
DEFAULT_PORT_RANGE = (20000, 29999)


def _default_state_dir(env: Mapping[str, str]) -> Path:
    """The XDG base-directory rule: `$XDG_STATE_HOME/fleetd`, else `~/.local/state/fleetd`."""
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "fleetd"


def _port(name: str, raw: str | None, default: int, *, any_ok: bool = False) -> int:
    """Read a TCP port, refusing anything a socket could not bind with a sentence.

    With `any_ok`, 0 is allowed and means "any free port" (the state file says which)."""
    if raw is None:
        return default
    try:
        port = int(raw.strip())
    except ValueError:
        raise InvalidSetting(name, raw, "it must be a port number, e.g. 7070") from None
    if any_ok and port == 0:
        return 0
    if not 1 <= port <= 65535:
        raise InvalidSetting(name, raw, "a port number must be between 1 and 65535")
    return port


def _port_range(raw: str | None) -> tuple[int, int]:
    """`FLEET_PORT_RANGE=20000-29999`: the ports the ports service may lease, both ends included."""
    if raw is None:
        return DEFAULT_PORT_RANGE
    low, dash, high = raw.partition("-")
    if not dash:
        raise InvalidSetting("FLEET_PORT_RANGE", raw, "it must be LOW-HIGH, e.g. 20000-29999")
    first = _port("FLEET_PORT_RANGE", low, 0)
    last = _port("FLEET_PORT_RANGE", high, 0)
    if first > last:
        raise InvalidSetting("FLEET_PORT_RANGE", raw, "LOW must not be above HIGH")
    return first, last


def _count(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidSetting(name, raw, "it must be a whole number, e.g. 4") from None
    if value < 0:
        raise InvalidSetting(name, raw, "it cannot be negative")
    return value


def _path(raw: str | None) -> Path | None:
    return Path(raw).expanduser() if raw else None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything fleetd reads from the environment, read once and then passed around."""

    state_dir: Path
    nats_url: str | None = None  # None: `fleet up` starts the embedded nats-server
    # A credentials file (infra/natsauth.py): an agent's own NATS user, set in its panes.
    nats_creds: Path | None = None
    # A NATS you run with auth callout (infra/natscallout.py): the issuer's seed file, and a
    # system-account URL that closes a revoked agent's connections.
    nats_callout_seed_file: Path | None = None
    nats_system_url: str | None = None
    ray_address: str | None = None  # None: `fleet up` starts a local Ray
    gateway_port: int = DEFAULT_GATEWAY_PORT
    worktree_root: Path | None = None  # None: `<state_dir>/worktrees`
    tmux_socket: str = "fleetd"  # the fleet's own tmux server (`tmux -L fleetd`)
    pool_size: int = 2  # warm agent actors kept ready per fleet
    max_agents: int = 200
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE  # ports leased to agents' services

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default `os.environ`); an empty variable counts as unset."""
        source = os.environ if env is None else env
        values = {k: v for k, v in source.items() if v.strip()}
        state_dir = values.get("FLEET_STATE_DIR")
        worktrees = values.get("FLEET_WORKTREE_ROOT")
        return cls(
            state_dir=Path(state_dir).expanduser() if state_dir else _default_state_dir(values),
            nats_url=values.get("FLEET_NATS_URL"),
            nats_creds=Path(values["FLEET_NATS_CREDS"]) if "FLEET_NATS_CREDS" in values else None,
            nats_callout_seed_file=_path(values.get("FLEET_NATS_CALLOUT_SEED_FILE")),
            nats_system_url=values.get("FLEET_NATS_SYSTEM_URL"),
            ray_address=values.get("FLEET_RAY_ADDRESS"),
            gateway_port=_port(
                "FLEET_GATEWAY_PORT",
                values.get("FLEET_GATEWAY_PORT"),
                DEFAULT_GATEWAY_PORT,
                any_ok=True,
            ),
            worktree_root=Path(worktrees).expanduser() if worktrees else None,
            tmux_socket=values.get("FLEET_TMUX_SOCKET", "fleetd"),
            pool_size=_count("FLEET_POOL_SIZE", values.get("FLEET_POOL_SIZE"), 2),
            max_agents=_count("FLEET_MAX_AGENTS", values.get("FLEET_MAX_AGENTS"), 200),
            port_range=_port_range(values.get("FLEET_PORT_RANGE")),
        )

    @property
    def worktrees(self) -> Path:
        """Where agent worktrees go: `FLEET_WORKTREE_ROOT`, else under the state dir."""
        return self.worktree_root or self.state_dir / "worktrees"

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE_NAME

    @property
    def lock_file(self) -> Path:
        """Held with flock by the live `fleet up`; the kernel drops it if that process dies."""
        return self.state_dir / LOCK_FILE_NAME

    @property
    def nats_store_dir(self) -> Path:
        return self.state_dir / "nats"


class FleetState(msgspec.Struct, kw_only=True):
    """What `fleet up` writes once it is ready: where each part listens, and who owns it."""

    pid: int  # the `fleet up` process; the state is stale when it is gone
    state_dir: str
    nats_url: str
    nats_pid: int | None = None  # None when FLEET_NATS_URL points at a NATS we did not start
    # The control plane's NATS credential (0600, infra/natsauth.py); None: NATS without users.
    # `nats_url` never holds a password.
    nats_creds: str | None = None
    started_at: datetime
    ray_address: str | None = None
    gateway_url: str | None = None


def format_state(state: FleetState, as_json: bool) -> str:
    """One JSON line for programs, or a few aligned lines for people."""
    if as_json:
        return msgspec.json.encode(state).decode()
    nats_how = f"embedded, pid {state.nats_pid}" if state.nats_pid else "external"
    lines = [
        f"fleetd is up (pid {state.pid}, since {state.started_at:%Y-%m-%d %H:%M:%S %Z})",
        f"  nats     {state.nats_url} ({nats_how})",
        f"  state    {Path(state.state_dir) / 'fleet.json'}",
    ]
    if state.ray_address:
        lines.append(f"  ray      {state.ray_address}")
    if state.gateway_url:
        lines.append(f"  gateway  {state.gateway_url}")
    return "\n".join(lines)


def now_utc() -> datetime:
    return datetime.now(UTC)


def pid_alive(pid: int | None) -> bool:
    """True when `pid` is a running process; a zombie (exited, not yet reaped) counts as dead."""
    if not pid or pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def write_state(path: Path, state: FleetState) -> None:
    """Write atomically (temp file then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)) + b"\n")
    os.replace(tmp, path)


def remove_state(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_state_file(path: Path) -> FleetState | None:
    """The state as written, alive or not; None when there is no file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=FleetState)
    except msgspec.DecodeError as e:
        raise NotRunning(
            f"the state file {path} cannot be read ({e}); remove it and run `fleet up`"
        ) from e


def read_state(settings: Settings) -> FleetState:
    """The state of the live `fleet up`, or NotRunning with the command that fixes it."""
    path = settings.state_file
    state = read_state_file(path)
    if state is None:
        raise NotRunning(f"fleetd is not up (no state file at {path}); start it with `fleet up`")
    if not pid_alive(state.pid):
        raise NotRunning(
            f"fleetd is not up (the `fleet up` process {state.pid} named in {path} has exited); "
            "start it with `fleet up`"
        )
    return state
