"""The templates service: templates kept versioned in KV `fleet_templates`, answering requests.

One key per template name; each put is the next version (1, 2, ...) of that name, written with
compare-and-set on the key's last revision, so two applies racing get two versions, never one
lost. The bucket keeps the last `history` revisions of a key (10, set by infra.nats); an older
version is reported as no longer kept. Built-in templates are stored at start when missing.

Requests (`{"op": ...}`): `apply` {source, file} validates and stores, replying with the
version (or the sentence naming the file and field); `ls`; `show` {name, version}; `diff`
{name, v1, v2} (a unified diff of the YAML as applied).
"""

from __future__ import annotations

import difflib
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from infra import kvscan, template_files
from infra.responder import serve
from schemas import replies, subjects
from schemas.errors import FleetError, InvalidTemplate, UnknownTemplate
from schemas.templates import (
    ApplyTemplate,
    DiffTemplate,
    ListTemplates,
    ShowTemplate,
    StoredTemplate,
    TemplateOp,
)

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 20
_decoder = msgspec.json.Decoder(StoredTemplate)
_encode = msgspec.json.Encoder().encode


class TemplateStore:
    """Versions of each template in one KV bucket."""

    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self.kv, self.js = kv, js

    async def latest(self, name: str) -> tuple[StoredTemplate, int] | None:
        """The newest version and its KV revision, or None."""
        try:
            entry = await self.kv.get(subjects.token(name, "template name"))
        except KeyNotFoundError:
            return None
        return _decoder.decode(entry.value or b""), entry.revision or 0

    async def versions(self, name: str) -> list[StoredTemplate]:
        """Every version the bucket still keeps, oldest first."""
        key = subjects.token(name, "template name")
        found = await kvscan.rows(self.js, subjects.TEMPLATES_BUCKET, key, history=True)
        return [_decoder.decode(row.value) for row in found if row.value]

    async def get(self, name: str, version: int = 0) -> StoredTemplate:
        if version <= 0:
            found = await self.latest(name)
            if found is None:
                raise UnknownTemplate(name, await self.names())
            return found[0]
        kept = await self.versions(name)
        for stored in kept:
            if stored.version == version:
                return stored
        if not kept:
            raise UnknownTemplate(name, await self.names())
        have = ", ".join(str(s.version) for s in kept)
        raise FleetError(f"template {name} has no version {version} kept (kept: {have})")

    async def names(self) -> list[str]:
        return sorted({row.key for row in await kvscan.rows(self.js, subjects.TEMPLATES_BUCKET)})

    async def put(self, stored: StoredTemplate) -> tuple[StoredTemplate, bool]:
        """Store as the next version unless it equals the latest; (what is stored, changed)."""
        for _ in range(CAS_ATTEMPTS):
            found = await self.latest(stored.name)
            if found is not None and _same(found[0], stored):
                return found[0], False
            version = found[0].version + 1 if found else 1
            new = msgspec.structs.replace(stored, version=version)
            try:
                if found is None:
                    await self.kv.create(stored.name, _encode(new))
                else:
                    await self.kv.update(stored.name, _encode(new), last=found[1])
            except KeyWrongLastSequenceError:
                continue  # another apply won this version: read again and take the next
            return new, True
        raise FleetError(f"template {stored.name} is being applied by many at once; try again")

    async def raw(self, name: str) -> tuple[dict[str, Any], int] | None:
        """A template's unresolved data (stored first, else built in) and its version."""
        found = await self.latest(name)
        if found is not None:
            return template_files.parse(found[0].source, found[0].file or f"{name}.yaml"), found[
                0
            ].version
        data = template_files.builtin_raw(name)
        return (data, 0) if data is not None else None


def _same(a: StoredTemplate, b: StoredTemplate) -> bool:
    return a.source == b.source and a.parents == b.parents and a.spec == b.spec


async def compile_source(
    store: TemplateStore, source: str, file: str, *, by: str = "", builtin: bool = False
) -> StoredTemplate:
    """Parse and check `source`, resolving `extends` against the store (then the built-ins)."""
    raw = template_files.parse(source, file)
    found: dict[str, dict[str, Any]] = {}
    parents: dict[str, int] = {}
    parent = raw.get("extends")
    while isinstance(parent, str) and parent not in found and parent != raw.get("name"):
        got = await store.raw(parent)
        if got is None:
            break  # resolve() names the unknown parent
        found[parent], parents[parent] = got
        parent = got[0].get("extends")
    merged, _ = template_files.resolve(raw, file, found.get)
    spec = template_files.convert(merged, file)
    return StoredTemplate(
        name=spec.name,
        version=0,
        source=source,
        spec=spec,
        file=file,
        parents=parents,
        builtin=builtin,
        applied_at=datetime.now(UTC),
        by=by,
    )


class TemplatesService:
    def __init__(self, store: TemplateStore) -> None:
        self.store = store
        self.sub: Subscription | None = None

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None

    async def load_builtins(self) -> list[str]:
        """Store each built-in template that the bucket does not have yet; the names stored."""
        stored = []
        for name, text in sorted(template_files.builtin_sources().items()):
            if await self.store.latest(name) is None:
                compiled = await compile_source(
                    self.store, text, f"{name}.yaml", by="fleetd", builtin=True
                )
                await self.store.put(compiled)
                stored.append(name)
        return stored

    async def handle(self, data: bytes) -> bytes:
        req: TemplateOp = replies.decode_request(data, TemplateOp, "templates request")
        match req:
            case ApplyTemplate(source=source, file=file, by=by):
                if not source.strip():
                    raise InvalidTemplate(file, "", "the template is empty")
                compiled = await compile_source(self.store, source, file, by=by)
                stored, changed = await self.store.put(compiled)
                return replies.ok(name=stored.name, version=stored.version, changed=changed)
            case ListTemplates():
                rows = []
                for name in await self.store.names():
                    found = await self.store.latest(name)
                    if found is not None:
                        rows.append(_summary(found[0]))
                return replies.ok(templates=rows)
            case ShowTemplate(name=name, version=version):
                return replies.ok(**_shown(await self.store.get(name, version)))
            case DiffTemplate(name=name, v1=v1, v2=v2):
                return replies.ok(**await self._diff(name, v1, v2))
        raise FleetError(f"unhandled templates request {req!r}")  # pragma: no cover

    async def _diff(self, name: str, v1: int, v2: int) -> dict[str, Any]:
        new = await self.store.get(name, v2)
        if v1 <= 0:
            v1 = new.version - 1
            if v1 <= 0:
                return {"name": name, "v1": 0, "v2": new.version, "diff": ""}
        old = await self.store.get(name, v1)
        lines = difflib.unified_diff(
            old.source.splitlines(keepends=True),
            new.source.splitlines(keepends=True),
            fromfile=f"{name} v{old.version}",
            tofile=f"{name} v{new.version}",
        )
        return {"name": name, "v1": old.version, "v2": new.version, "diff": "".join(lines)}


def _summary(s: StoredTemplate) -> dict[str, Any]:
    return {
        "name": s.name,
        "version": s.version,
        "description": s.spec.description,
        "extends": s.spec.extends,
        "services": list(s.spec.services),
        "builtin": s.builtin,
        "applied_at": s.applied_at,
        "by": s.by,
    }


def _shown(s: StoredTemplate) -> dict[str, Any]:
    shown: dict[str, Any] = msgspec.to_builtins(s)
    shown["template"] = shown.pop("spec")
    return shown


async def start(nc: Client) -> TemplatesService:
    """Store missing built-ins and answer template requests; `close()` stops answering."""
    kv = await nc.jetstream().key_value(subjects.TEMPLATES_BUCKET)
    service = TemplatesService(TemplateStore(kv, nc.jetstream()))
    added = await service.load_builtins()
    if added:
        log.info("stored built-in templates: %s", ", ".join(added))
    service.sub = await serve(nc, subjects.control("templates"), service.handle, "templates")
    return service
