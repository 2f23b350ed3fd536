"""The escape tests use the fleet fixtures of tests/fleet (a real NATS, Ray, tmux and git)."""

from tests.fleet.conftest import gw, health, http, nc

__all__ = ["gw", "health", "http", "nc"]
