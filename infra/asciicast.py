"""A tiny asciicast v2 recorder for tmux `pipe-pane`: `python -m infra.asciicast PATH W H`.

tmux pipes the raw bytes a pane prints to our stdin; we write the asciicast v2 format that
`asciinema play` reads: one JSON header line, then one `[seconds, "o", text]` line per read.
Each event is flushed, so a recording is readable (and survives) while it is being made.
Standard library only: it runs as a child of the tmux server, outside fleetd's processes.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
import time
from typing import BinaryIO, TextIO

CHUNK = 64 * 1024


def header(width: int, height: int, timestamp: float) -> str:
    """The v2 header line (without newline)."""
    return json.dumps({"version": 2, "width": width, "height": height, "timestamp": int(timestamp)})


def record(source: BinaryIO, out: TextIO, width: int, height: int) -> None:
    """Copy `source` into `out` as asciicast v2 until EOF.

    The incremental decoder keeps a multibyte character split across two reads whole;
    invalid bytes become U+FFFD instead of ending the recording.
    """
    out.write(header(width, height, time.time()) + "\n")
    out.flush()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start = time.monotonic()
    fd = source.fileno()
    while True:
        data = os.read(fd, CHUNK)
        text = decoder.decode(data, final=not data)
        if text:
            event = [round(time.monotonic() - start, 6), "o", text]
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
            out.flush()
        if not data:
            return


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m infra.asciicast PATH WIDTH HEIGHT", file=sys.stderr)
        return 2
    path, width, height = argv[0], int(argv[1]), int(argv[2])
    with open(path, "x", encoding="utf-8") as out:
        record(sys.stdin.buffer, out, width, height)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
