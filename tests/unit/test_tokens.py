"""The token store under writers in many processes at once, and the gateway's tickets.

The store's promise (services/tokens.py): every create and every revoke made by any process is
kept (a lock around read-change-write), and a reader never mistakes a changed file for the one
it read before. Tickets (services/gateway/tickets.py): single use, short-lived, and worth nothing
once their token is revoked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import InvalidName
from services.gateway.tickets import MAX_TICKETS_PER_TOKEN, Tickets, TooManyTickets, Unauthorized
from services.tokens import TOKENS_FILE, InvalidRole, TokenStore, digest

REPO = Path(__file__).resolve().parents[2]
GUARD_S = 180.0  # only stops a hung child from hanging the suite; nothing is timed

# A writer in its own process: it says it is ready once imported, waits for "go" on stdin (so
# all of them start together), then creates or revokes and prints one line per call.
CHILD = """
import sys
from pathlib import Path
from services.tokens import TokenStore
state, kind, tag, count = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
store = TokenStore(state)
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    if kind == "create":
        print(store.create("viewer", f"made-{tag}-{i}"), flush=True)
    else:
        print(store.revoke(f"victim-{tag}-{i}"), flush=True)
"""


def _writer(state: Path, kind: str, tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), kind, tag, str(count)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_creates_and_revokes_from_many_processes_lose_nothing(tmp_path: Path) -> None:
    creators, revokers, each = 6, 3, 12
    setup = TokenStore(tmp_path)
    victims = {
        f"victim-{r}-{i}": setup.create("operator", f"victim-{r}-{i}")
        for r in range(revokers)
        for i in range(each)
    }
    procs = [_writer(tmp_path, "create", str(c), each) for c in range(creators)]
    procs += [_writer(tmp_path, "revoke", str(r), each) for r in range(revokers)]
    for proc in procs:  # every writer imported and waiting: then all start at once
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=GUARD_S)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    made = [token for out in outputs[:creators] for token in out]
    revoked = [int(n) for out in outputs[creators:] for n in out]
    assert len(made) == creators * each and revoked == [1] * (revokers * each)

    reader = TokenStore(tmp_path)
    lost = [t for t in made if reader.check(t) is None]
    assert not lost, f"{len(lost)} of {len(made)} concurrent creates were lost"
    alive = [name for name, t in victims.items() if reader.check(t) is not None]
    assert not alive, f"revoked tokens still valid: {alive}"
    assert len(reader.entries()) == creators * each
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOKENS_FILE, "tokens.json.lock"]
    assert (tmp_path / TOKENS_FILE).stat().st_mode & 0o777 == 0o600


def test_a_reader_sees_a_change_of_the_same_size_and_time(tmp_path: Path) -> None:
    """A revoke written within the clock's tick of the last write, with a file of the same
    length, is still seen: the reader holds the file it read, so the new one has a new inode."""
    writer, reader = TokenStore(tmp_path), TokenStore(tmp_path)
    token = writer.create("admin", "a")
    assert reader.check(token) is not None
    path = tmp_path / TOKENS_FILE
    before = path.stat()
    forged = path.read_bytes().replace(digest(token).encode(), b"0" * 64)
    tmp = tmp_path / "other"
    tmp.write_bytes(forged)
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, path)
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert reader.check(token) is None
    reader.close()


def test_revoke_removes_every_token_of_the_name_and_nothing_else(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    first, second = store.create("viewer", "ci"), store.create("operator", "ci")
    kept = store.create("viewer", "other")
    assert store.revoke("ci") == 2 and store.revoke("ci") == 0
    assert store.check(first) is None and store.check(second) is None
    assert store.check(kept) is not None
    with pytest.raises(InvalidRole, match="expected one of viewer, operator, admin"):
        store.create("root")
    for name in ("two words", "x" * 65, "line\nbreak"):  # a sentence, and no token made
        with pytest.raises(InvalidName, match="invalid token name"):
            store.create("viewer", name)
    assert len(store.entries()) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_opens_once_within_its_time_and_dies_with_its_token(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.create("operator", "ops")
    entry = store.check(token)
    assert entry is not None
    clock = Clock()
    tickets = Tickets(ttl_s=30.0, clock=clock)

    ticket = tickets.issue(digest(token), entry)
    assert token not in ticket
    assert tickets.redeem(ticket, store) == (digest(token), entry)
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        tickets.redeem(ticket, store)  # single use

    late = tickets.issue(digest(token), entry)
    clock.now += 30.0
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        tickets.redeem(late, store)
    assert len(tickets) == 0  # expired ones are not kept

    orphan = tickets.issue(digest(token), entry)
    store.revoke("ops")
    with pytest.raises(Unauthorized, match="revoked"):
        tickets.redeem(orphan, store)
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        tickets.redeem("made-up", store)


def test_a_token_cannot_hoard_tickets(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token, other = store.create("viewer", "v"), store.create("viewer", "w")
    entry, other_entry = store.check(token), store.check(other)
    assert entry is not None and other_entry is not None
    clock = Clock()
    tickets = Tickets(clock=clock)
    for _ in range(MAX_TICKETS_PER_TOKEN):
        tickets.issue(digest(token), entry)
    with pytest.raises(TooManyTickets, match="has 100 unused tickets"):
        tickets.issue(digest(token), entry)
    tickets.issue(digest(other), other_entry)  # another token is not held back
    clock.now += tickets.ttl_s
    tickets.issue(digest(token), entry)  # the old ones expired
