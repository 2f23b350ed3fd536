"""What an agent actor's worker imports: not aiohttp (nats-py wants it for WebSocket URLs
alone), GitPython or libtmux (fleetd runs git and tmux itself), nor the YAML template loader
(an agent needs only its recorded template's profile); a ws:// URL still works."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("aiohttp", "git", "libtmux", "infra.template_files")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout


def test_an_agent_actor_imports_none_of_the_heavy_packages() -> None:
    code = f"import sys, actors.agent; print(*[m for m in {HEAVY!r} if m in sys.modules])"
    assert _run(code).split() == []


def test_nats_gets_aiohttp_back_for_a_websocket_url() -> None:
    code = (
        "import actors, nats.aio.transport as t\n"
        "from infra import natsimport\n"
        "assert t.aiohttp is None\n"
        "natsimport.for_url('nats://127.0.0.1:4222')\n"
        "assert t.aiohttp is None\n"
        "natsimport.for_url('nats://a:1,WS://127.0.0.1:8080')\n"
        "import aiohttp, multidict\n"
        "assert t.aiohttp is aiohttp and t.multidict is multidict\n"
        "print('ok')"
    )
    assert _run(code).strip() == "ok"


def test_aiohttp_loaded_first_is_left_to_nats() -> None:
    code = "import aiohttp, actors, nats.aio.transport as t; print(t.aiohttp is aiohttp)"
    assert _run(code).strip() == "True"
