"""The one table from an error's code to its HTTP status, and the gateway's error boundary.

A `FleetError` raised here or carried in a reply from the bus (`{"ok": false, "error":
{"code", ...}}`) is answered with its own sentence and the status its code has in `STATUS`.
Every code the project can raise has a row (tests/unit/test_gateway_status.py reads them all
from the source), so a new error cannot fall through to a status nobody chose; one that does
(a code from a newer peer) is a 500 and logged once. Anything that is not a `FleetError` is a
bug: `infra.errorlog.unexpected` gives it an error id, logs its traceback, and the caller gets a
500 with one sentence naming that id.

What the statuses mean here: 400 the request cannot be taken as written; 401/403 the token;
404 no such thing; 409 the state of the agent, task or fleet does not allow it now; 413 too
large; 429 too many (try later); 500 fleetd itself is broken or misconfigured (a bug has an
error id); 502 a program or peer fleetd drives (git, tmux, an actor's reply) failed or answered
nonsense, its sentence says what it said; 503 a part of the fleet is not there or has no room
now; 504 no answer in time.
"""

from __future__ import annotations

import logging

from aiohttp import web

from infra import errorlog
from schemas import replies
from schemas.errors import FleetError, PayloadTooLarge
from services.gateway.keys import Handler

log = logging.getLogger(__name__)

STATUS: dict[str, int] = {
    # 400: the request itself is wrong (its sentence says what to change)
    "fleet_error": 400,  # a refusal with only its sentence
    "bad_request": 400,
    "invalid_json": 400,
    "invalid_field": 400,
    "unknown_type": 400,
    "missing_type": 400,
    "not_an_object": 400,
    "by_not_accepted": 400,
    "invalid_name": 400,
    "invalid_template": 400,
    "invalid_task": 400,
    "bad_dependencies": 400,
    "invalid_pattern": 400,
    "invalid_role": 400,
    "no_assistant": 400,
    "no_terminal": 400,
    # 401, 403: the token
    "unauthorized": 401,
    "bad_token": 401,
    "forbidden": 403,
    "not_your_task": 403,
    # 404: no such thing
    "not_found": 404,
    "unknown_agent": 404,
    "unknown_checkpoint": 404,
    "unknown_service": 404,
    "unknown_template": 404,
    "unknown_task": 404,
    "unknown_verb": 404,  # nothing in the fleet answers that control verb
    "unknown_window": 404,  # the agent's session has no such tmux window
    "not_a_repository": 404,  # a spawn's repo: no git repository there
    "not_installed": 404,  # a spawn's command: no such program on the PATH
    "unknown_ref": 404,  # a spawn's base ref: no such commit in the repository
    # 409: the state of the agent, task or fleet does not allow it now
    "agent_exists": 409,
    "task_exists": 409,
    "invalid_transition": 409,
    "invalid_task_transition": 409,
    "concurrent_update": 409,
    "worktree_has_work": 409,
    "no_worktree": 409,  # the agent was removed: nothing to checkpoint
    "session_missing": 409,  # the agent's tmux session is gone
    "pane_dead": 409,  # the agent window's process ended
    "dependencies_not_done": 409,
    "no_attempts_left": 409,
    "stale_report": 409,
    "already_running": 409,
    # 413, 429
    "payload_too_large": 413,
    "rate_limited": 429,
    "too_many_agents": 429,
    "mailbox_full": 429,  # sent again once the agent has read some of its mail
    # 500: fleetd is broken or misconfigured (a bug's sentence names its error id)
    "internal": 500,
    "unreadable_tokens": 500,
    "invalid_setting": 500,
    "invalid_config": 500,
    "credentials_unusable": 500,
    "callout_key_unusable": 500,
    "nats_server_missing": 500,
    "processes_survived": 500,
    # 502: a program or peer fleetd drives failed or answered nonsense (its own words)
    "git_failed": 502,
    "checkpoint_failed": 502,  # its sentence carries git's or tmux's
    "tmux_failed": 502,
    "ray_start_failed": 502,
    "nats_server_failed": 502,
    "remote_error": 502,  # a peer's error that came without a code of its own
    "bad_reply": 502,
    # 503: a part of the fleet is not there, busy, or has no room now: nothing was done
    "busy": 503,  # the agent is in another step; try again
    "store_unavailable": 503,
    "no_responders": 503,
    "disconnected": 503,
    "not_running": 503,
    "cannot_place": 503,
    "ports_exhausted": 503,
    "no_free_uid": 503,
    # 504: no answer in time (it may still finish)
    "timeout": 504,
}
UNMAPPED = 500  # a code with no row (a newer peer's): logged, never taken for bad input
_told: set[str] = set()


def status_for(code: str) -> int:
    status = STATUS.get(code)
    if status is None:
        if code not in _told:
            _told.add(code)
            log.warning("gateway: error code %r has no HTTP status in STATUS; answered 500", code)
        return UNMAPPED
    return status


def error_response(err: FleetError, status: int | None = None) -> web.Response:
    return web.Response(
        body=replies.error(err),
        status=status or status_for(err.code),
        content_type="application/json",
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gateway's error boundary: a FleetError is its sentence and status, a bug a 500."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        size = request.content_length or 0
        return error_response(PayloadTooLarge("request body", size, request.client_max_size))
    except web.HTTPException:
        raise
    except FleetError as e:
        return error_response(e)
    except Exception as e:  # noqa: BLE001 (the gateway's boundary: a bug gets its error id)
        body = errorlog.reply_to(e, log, f"gateway: {request.method} {request.path}")
        return web.Response(body=body, status=500, content_type="application/json")
