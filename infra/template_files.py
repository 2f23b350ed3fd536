"""Reading templates: YAML -> `schemas.templates.Template`, with `extends` resolved and checked.

A bad template is refused with one sentence naming the file, the field path and what was
expected (`web.yaml: services.api.readiness.http.port: expected int or str, got array`).
msgspec reports a dict value's path as `[...]` (it elides keys); the key is found again here
by walking the data with the types, so the sentence says `services.api`.

`extends` is resolved on the raw data: the child's fields override the parent's, mappings are
merged key by key (so a child can change one service's command and keep its probes), lists
are replaced whole. The built-in templates ship as YAML under `infra/deploy/templates/`.
"""

from __future__ import annotations

import functools
import re
import signal
import types
import typing
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Literal

import msgspec
import yaml

from schemas import subjects
from schemas import validation as v
from schemas.assistants import with_patterns
from schemas.builtin_profiles import BUILTIN as PROFILES
from schemas.errors import BadRequest, InvalidName, InvalidTemplate, UnknownTemplate
from schemas.ports import env_key, lease_name
from schemas.templates import Probe, Template

MAX_EXTENDS_DEPTH = 16
MAX_TEMPLATE_BYTES = 256 * 1024
_SIGNALS = frozenset(s.name for s in signal.Signals)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\.\.\.|\d+)\]")

Raw = dict[str, Any]
Lookup = Callable[[str], Raw | None]  # a template name -> its raw (unresolved) data, or None


# -- parsing ---------------------------------------------------------------------------------


def parse(text: str, source: str = "") -> Raw:
    """YAML text -> a mapping; a YAML error names the line and column."""
    if len(text.encode()) > MAX_TEMPLATE_BYTES:
        size = len(text.encode())
        why = f"the template is {size} bytes, more than the limit of {MAX_TEMPLATE_BYTES} bytes"
        raise InvalidTemplate(source, "", why)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidTemplate(source, where, f"not valid YAML: {problem}") from e
    if not isinstance(data, dict):
        got = "nothing" if data is None else _kind(data)
        raise InvalidTemplate(source, "", f"expected a mapping of template fields, got {got}")
    return {str(k): v for k, v in data.items()}


def load(text: str, source: str = "", lookup: Lookup | None = None) -> tuple[Template, list[str]]:
    """Parse, resolve `extends` through `lookup`, convert and check. Returns the template and
    the chain of parents it extends, nearest first."""
    raw = parse(text, source)
    merged, parents = resolve(raw, source, lookup or builtin_raw)
    return convert(merged, source), parents


def resolve(raw: Raw, source: str, lookup: Lookup) -> tuple[Raw, list[str]]:
    """Apply `extends` (recursively); a cycle or an unknown parent is refused."""
    name = raw.get("name")
    chain: list[str] = []
    seen = {name} if isinstance(name, str) else set()
    merged = raw
    parent = raw.get("extends")
    while parent is not None:
        if not isinstance(parent, str):
            raise InvalidTemplate(source, "extends", f"expected str, got {_kind(parent)}")
        if parent in seen or len(chain) >= MAX_EXTENDS_DEPTH:
            cycle = " -> ".join([*(str(n) for n in [name, *chain]), parent])
            raise InvalidTemplate(
                source, "extends", f"templates extend each other in a cycle: {cycle}"
            )
        found = lookup(parent)
        if found is None:
            known = sorted(builtin_names())
            raise InvalidTemplate(source, "extends", str(UnknownTemplate(parent, known)))
        seen.add(parent)
        chain.append(parent)
        merged = merge(found, merged)
        parent = found.get("extends")
    if chain:
        merged = {**merged, "extends": chain[0]}
    return merged, chain


def merge(parent: Mapping[str, Any], child: Mapping[str, Any]) -> Raw:
    """The child over the parent: mappings merged per key (recursively), anything else replaced."""
    out = dict(parent)
    for key, value in child.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def convert(raw: Raw, source: str = "") -> Template:
    """Raw data -> a checked Template; every failure is one sentence with the field path."""
    try:
        template = msgspec.convert(raw, Template)
    except msgspec.ValidationError as e:
        path, why = _explain(str(e), raw)
        raise InvalidTemplate(source, path, why) from e
    check(template, source)
    return template


# -- the sentence for a msgspec error ---------------------------------------------------------


def _explain(message: str, raw: Raw) -> tuple[str, str]:
    what, _, at = message.partition(" - at `")
    segments = _SEGMENT.findall(at.rstrip("`").removeprefix("$"))
    names, final_type = _walk(raw, Template, segments)
    field = re.fullmatch(r"Object (contains unknown|missing required) field `(.+)`", what)
    if field:
        names.append(field.group(2))
        why = "unknown field" if "unknown" in field.group(1) else "required field is missing"
        return ".".join(names), why
    choices = _literal_choices(final_type)
    if choices and what.startswith("Invalid enum value"):
        got = what.removeprefix("Invalid enum value ")
        return ".".join(names), f"expected one of {', '.join(choices)}, got {got}"
    typed = re.fullmatch(r"Expected `(.+)`, got `(.+)`", what)
    if typed:
        wanted = " or ".join(t.strip() for t in typed.group(1).split("|"))
        return ".".join(names), f"expected {wanted}, got {typed.group(2)}"
    return ".".join(names), what[:1].lower() + what[1:]


def _walk(data: Any, tp: Any, segments: list[tuple[str, str]]) -> tuple[list[str], Any]:
    """Follow msgspec's path through the data, naming each dict key that msgspec elided."""
    names: list[str] = []
    for field, index in segments:
        tp = _unwrap(tp)
        if field:
            names.append(field)
            hints = _hints(tp) if isinstance(tp, type) else {}
            tp = hints.get(field, Any)
            data = data.get(field) if isinstance(data, dict) else None
        elif index == "...":
            value_tp = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else Any
            key = _failing_key(data, value_tp) if isinstance(data, dict) else None
            names[-1:] = [f"{names[-1]}.{key}" if names else str(key)]
            data, tp = (data.get(key) if key is not None else None), value_tp
        else:
            names[-1:] = [f"{names[-1] if names else ''}[{index}]"]
            args = typing.get_args(tp)
            tp = args[0] if args else Any
            data = data[int(index)] if isinstance(data, list) and int(index) < len(data) else None
    return names, _unwrap(tp)


def _failing_key(data: dict[Any, Any], value_tp: Any) -> Any:
    """The first key whose value does not convert: msgspec stops at the first error it meets."""
    for key, value in data.items():
        try:
            msgspec.convert(value, value_tp)
        except msgspec.ValidationError:
            return key
    return next(iter(data), "?")


def _unwrap(tp: Any) -> Any:
    """`X | None` -> X (the path goes into the non-None member)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def _literal_choices(tp: Any) -> list[str]:
    return [str(a) for a in typing.get_args(tp)] if typing.get_origin(tp) is Literal else []


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


# -- checks that types cannot express ---------------------------------------------------------


def check(t: Template, source: str = "") -> None:
    """Names are safe tokens; depends_on names services and has no cycle; ports are unique;
    each probe has exactly one kind and names a port of its service; patterns compile."""
    _token(t.name, "template name", source, "name")
    if t.extends is not None:
        _token(t.extends, "template name", source, "extends")
    if t.assistant.profile not in PROFILES:
        why = f"expected one of {', '.join(sorted(PROFILES))}, got {t.assistant.profile!r}"
        raise InvalidTemplate(source, "assistant.profile", why)
    try:
        with_patterns(PROFILES[t.assistant.profile], dict(t.assistant.patterns))
    except BadRequest as e:
        raise InvalidTemplate(source, "assistant.patterns", e.message) from e
    env_names: dict[str, str] = {}
    for name, spec in t.services.items():
        at = f"services.{name}"
        _token(name, "service name", source, at)
        for port in spec.ports:
            _token(port, "port name", source, f"{at}.ports")
            if spec.ports.count(port) > 1:
                raise InvalidTemplate(source, f"{at}.ports", f"port {port!r} is named twice")
            key = env_key(lease_name(name, port))
            if env_names.setdefault(key, f"{name}.{port}") != f"{name}.{port}":
                other = env_names[key]
                why = f"port {name}.{port} and port {other} would both be {key}"
                raise InvalidTemplate(source, f"{at}.ports", why)
        for target in spec.depends_on:
            if target not in t.services:
                why = f"unknown service {target!r}; the services are {', '.join(t.services)}"
                raise InvalidTemplate(source, f"{at}.depends_on", why)
        for kind in ("readiness", "liveness", "startup"):
            probe = getattr(spec, kind)
            if probe is not None:
                _check_probe(probe, spec.ports, source, f"{at}.{kind}")
        _field(source, f"{at}.cwd", v.relative_path, spec.cwd, "service cwd")
        _field(source, f"{at}.env", v.env, spec.env, "env")
        _field(source, f"{at}.shutdown.signal", _signal, spec.shutdown.signal, "signal")
    cycle = dependency_cycle({n: list(s.depends_on) for n, s in t.services.items()})
    if cycle:
        why = f"services depend on each other in a cycle: {' -> '.join(cycle)}"
        raise InvalidTemplate(source, f"services.{cycle[0]}.depends_on", why)
    check_fields(t, source)


def check_fields(t: Template, source: str = "") -> None:
    """Environment, paths, refs and permissions (schemas.validation), each naming its field."""
    _field(source, "env", v.env, t.env, "env")
    _field(source, "assistant.env", v.env, t.assistant.env, "env")
    _field(source, "assistant.command", v.text, t.assistant.command, "command", v.MAX_COMMAND)
    _field(source, "workspace.base_ref", v.git_ref, t.workspace.base_ref, "base ref")
    for i, path in enumerate(t.workspace.copy):
        _field(source, f"workspace.copy[{i}]", v.relative_path, path, "file to copy")
    _field(source, "capabilities", v.names, t.capabilities, "capability")
    p = t.permissions
    for i, name in enumerate(p.env_passthrough):
        _field(source, f"permissions.env_passthrough[{i}]", v.env_name, name, "variable name")
    for i, name in enumerate(p.secrets):
        _field(source, f"permissions.secrets[{i}]", v.env_name, name, "variable name")
    for i, path in enumerate(p.paths):
        _field(source, f"permissions.paths[{i}]", v.granted_path, path, "granted path")
    for i, path in enumerate(p.home):
        _field(source, f"permissions.home[{i}]", v.home_path, path, "file of your home")


def _field(source: str, path: str, checker: Callable[..., Any], value: Any, *args: Any) -> None:
    try:
        checker(value, *args)
    except InvalidName as e:
        raise InvalidTemplate(source, path, e.message) from e


def _signal(value: str, what: str) -> str:
    if value not in _SIGNALS:
        raise InvalidName(what, value, "expected a signal name such as SIGTERM or SIGINT")
    return value


def _token(value: str, what: str, source: str, path: str) -> None:
    try:
        subjects.token(value, what)
    except InvalidName as e:
        raise InvalidTemplate(source, path, e.message) from e


def _check_probe(probe: Probe, ports: tuple[str, ...], source: str, at: str) -> None:
    kinds = [k for k in ("http", "tcp", "exec", "log") if getattr(probe, k) is not None]
    if len(kinds) != 1:
        got = ", ".join(kinds) if kinds else "none"
        raise InvalidTemplate(
            source, at, f"expected exactly one of http, tcp, exec, log; got {got}"
        )
    target = probe.http or probe.tcp
    if target is not None and isinstance(target.port, str) and target.port not in ports:
        listed = ", ".join(ports) if ports else "none"
        why = f"port {target.port!r} is not one of the service's ports ({listed})"
        raise InvalidTemplate(source, f"{at}.{kinds[0]}.port", why)


def dependency_cycle(graph: Mapping[str, list[str]]) -> list[str]:
    """A cycle in `depends_on` as [a, b, ..., a], or [] (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return []


# -- built-ins and the assistant profile ------------------------------------------------------


def _builtin_dir() -> Any:
    return resources.files("infra") / "deploy" / "templates"


@functools.cache
def builtin_sources() -> dict[str, str]:
    """Built-in template name -> its YAML text, as shipped in the package."""
    found: dict[str, str] = {}
    for entry in _builtin_dir().iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name.removesuffix(".yaml")] = entry.read_text()
    return found


def builtin_names() -> list[str]:
    return sorted(builtin_sources())


def builtin_raw(name: str) -> Raw | None:
    text = builtin_sources().get(name)
    return parse(text, f"{name}.yaml") if text is not None else None


def builtin(name: str) -> Template:
    """A built-in template, resolved; `UnknownTemplate` when there is none by that name."""
    text = builtin_sources().get(name)
    if text is None:
        raise UnknownTemplate(name, builtin_names())
    return load(text, f"{name}.yaml")[0]
