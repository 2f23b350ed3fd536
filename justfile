# fleetd's dev commands. Run them through `infra/deploy/dev <recipe>`, which makes .venv first.

set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv/bin"

# list the recipes
default:
    @{{bin}}/just --list

# bring fleetd up in the foreground (Ctrl-C stops it); e.g. `just up --detach`
up *ARGS:
    {{bin}}/fleet up {{ARGS}}

# lint, then the whole suite against real nats-server, tmux and git
test *ARGS: lint
    {{bin}}/pytest -q --durations=15 {{ARGS}}

# ruff (lint and format) and mypy
lint:
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/mypy

# rewrite the code in ruff's format and apply its safe fixes
fmt:
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# benchmarks: one JSON object per metric on stdout; e.g. `just bench eventstore`
bench GROUP="":
    {{bin}}/python -m tests.perf {{GROUP}}
