"""infra/treestat.py: a folder's fingerprint changes with any write, rename or new entry, is
withheld while an entry is too fresh to trust, and a git index's paths are read as git wrote
them (real git, versions 2 and 3; 4 is refused)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from infra import treestat


def git(where: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=where, check=True, capture_output=True)


def folder(tmp_path: Path) -> Path:
    top = tmp_path / "wt"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_text("a\n")
    (top / "sub" / "b.txt").write_text("b\n")
    (top / "link").symlink_to("a.txt")
    return top


def digest(top: Path) -> bytes:
    found = treestat.walk(top, quiet_s=0)
    assert found is not None
    return found.digest


def test_the_same_folder_gives_the_same_fingerprint_and_its_files(tmp_path: Path) -> None:
    top = folder(tmp_path)
    found = treestat.walk(top, quiet_s=0)
    assert found is not None and found.digest == digest(top)
    assert found.files == {"a.txt", "sub/b.txt", "link"}  # folders are not files


def test_any_change_changes_it(tmp_path: Path) -> None:
    top = folder(tmp_path)
    seen = {digest(top)}
    a = top / "a.txt"
    st = a.stat()
    a.write_text("A\n")  # same size, then the same mtime: only the ctime tells
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    seen.add(digest(top))
    (top / "sub" / "b.txt").rename(top / "sub" / "c.txt")
    seen.add(digest(top))
    (top / "sub" / "new").mkdir()
    seen.add(digest(top))
    (top / "link").unlink()
    seen.add(digest(top))
    assert len(seen) == 5


def test_a_fresh_entry_withholds_it_and_a_big_folder_has_none(tmp_path: Path) -> None:
    top = folder(tmp_path)
    assert treestat.walk(top, quiet_s=3600) is None  # everything changed within the hour
    assert treestat.walk(top, quiet_s=0, limit=3) is None  # 4 entries
    assert treestat.walk(top / "a.txt", quiet_s=0) is None  # not a folder
    assert treestat.walk(tmp_path / "missing", quiet_s=0) is None


def test_index_paths_reads_what_git_wrote(tmp_path: Path) -> None:
    top = folder(tmp_path)
    git(top, "init", "-q")
    (top / "a name that is rather long, with spaces.txt").write_text("x\n")
    git(top, "add", "-A")
    data = (top / ".git" / "index").read_bytes()
    expected = {"a.txt", "sub/b.txt", "link", "a name that is rather long, with spaces.txt"}
    assert treestat.index_paths(data) == expected
    (top / "later.txt").write_text("y\n")
    git(top, "add", "-N", "later.txt")  # intent-to-add: an extended flag, version 3
    data = (top / ".git" / "index").read_bytes()
    assert data[4:8] == b"\0\0\0\3"
    assert treestat.index_paths(data) == {*expected, "later.txt"}
    git(top, "update-index", "--index-version", "4")
    assert treestat.index_paths((top / ".git" / "index").read_bytes()) is None
    assert treestat.index_paths(b"not an index") is None
    assert treestat.index_paths(data[:40]) is None  # cut short
