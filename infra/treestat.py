"""An agent's folder as lstat sees it: enough to tell that nothing in it changed, without
reading a file, following a link or starting a process.

A checkpoint costs a jailed git (infra/gitjail.py: bubblewrap, the launcher, three gits); a
stop makes one. When every entry of the folder (its `.git` included: a commit, a checkout, a
change to the agent's index) has the inode, mode, size, mtime and ctime it had when the last
checkpoint read it, the files are what that checkpoint saved, so a stop can name the same
commit. A write changes the ctime, which no unprivileged process can set back, and a rename
changes the renamed entry's ctime and its folder's; so an equal fingerprint means no change.

The walk holds a descriptor of each folder (`os.fwalk`) and stats names relative to it with no
link followed, as `agentrepo.hand_back` does: a folder swapped for a link leads nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

LIMIT = 5_000  # entries; past this a walk costs more than it saves: no fingerprint
QUIET_S = 1.0  # an entry changed this recently may change again within its timestamp's tick


@dataclass(frozen=True)
class Known:
    """A fingerprint of an agent's folder and the commit holding those files; `commit` "" when
    none does yet: the files are the tree of `head`, as fleetd itself just checked them out."""

    digest: bytes
    commit: str
    head: str = ""


@dataclass(frozen=True)
class Walk:
    """A folder's fingerprint and the paths of its files and links (outside the top `.git`)."""

    digest: bytes
    files: frozenset[str]


def walk(top: str | Path, *, quiet_s: float = QUIET_S, limit: int = LIMIT) -> Walk | None:
    """The folder's fingerprint; None when it has more than `limit` entries, is not a folder,
    cannot be read, or (with `quiet_s`) holds an entry changed less than `quiet_s` ago: its
    timestamp could stay the same through one more write (a timestamp's tick is milliseconds),
    so the fingerprint could not tell that write from the checkpoint's content."""
    since = time.time_ns() - int(quiet_s * 1e9) if quiet_s > 0 else None
    digest = hashlib.blake2b(digest_size=20)
    files: set[str] = set()
    count = 0
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            return None
        for root, dirs, names, fd in os.fwalk(top, follow_symlinks=False):
            dirs.sort()  # the same order every time
            rel = os.path.relpath(root, top)
            for name in sorted([*dirs, *names]):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                count += 1
                if count > limit or (
                    since is not None and max(st.st_mtime_ns, st.st_ctime_ns) >= since
                ):
                    return None
                path = name if rel == "." else f"{rel}/{name}"
                fields = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                digest.update(os.fsencode(path) + b"\0" + struct.pack("<5q", *fields))
                if not stat.S_ISDIR(st.st_mode) and not (
                    path == ".git" or path.startswith(".git/")
                ):
                    files.add(path)
    except OSError:
        return None
    return Walk(digest.digest(), frozenset(files))


def index_paths(data: bytes, hash_len: int = 20) -> frozenset[str] | None:
    """The paths a git index names (version 2 or 3, as fleetd's own checkout writes it;
    `hash_len` 20 for sha1, 32 for sha256); None for another version or what does not parse."""
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3):
        return None
    paths: set[str] = set()
    pos = 12
    for _ in range(count):
        flags_at = pos + 40 + hash_len  # ctime, mtime, dev, ino, mode, uid, gid, size; hash
        if flags_at + 2 > len(data):
            return None
        (flags,) = struct.unpack(">H", data[flags_at : flags_at + 2])
        start = flags_at + 2 + (2 if version == 3 and flags & 0x4000 else 0)
        end = data.find(b"\0", start)
        if end < 0 or (flags & 0x0FFF != 0x0FFF and end - start != flags & 0x0FFF):
            return None
        paths.add(os.fsdecode(data[start:end]))
        pos += ((end - pos) // 8 + 1) * 8  # an entry is NUL-padded to a multiple of 8 bytes
    return frozenset(paths)
