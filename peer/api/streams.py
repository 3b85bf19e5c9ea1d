"""Admin routes that stream NDJSON while something happens: waiting for an operation,
following the operations and the event bus."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from peerstash.core.events import (
    ConfigChanged,
    Event,
    Notice,
    OperationChanged,
    OperationsDeleted,
    PlanStale,
    SharesReceived,
    SnapshotsChanged,
)
from peerstash.core.models import OpStatus
from peerstash.core.records import OpRecord, iso_time
from peerstash.core.store import OpFilter
from peerstash.peer.api.common import WINDOWS_KEY, WindowWanted, engine_of, keepalive, ndjson, send
from peerstash.peer.api.schema import (
    ConfigEvent,
    LinkEvent,
    NoticeEvent,
    OperationEvent,
    OpsDeletedEvent,
    PresentEvent,
    Ready,
    RemoteEvent,
    ServerEvent,
    SharesEvent,
    SnapshotsEvent,
    StaleEvent,
)
from peerstash.peer.links.link import LinkStateChanged
from peerstash.peer.services.opsync import OpsSynced
from peerstash.peer.services.remote_commands import RemoteRequestChanged, request_record


async def wait_op(request: web.Request) -> web.StreamResponse:
    """Stream an operation's changes as NDJSON until it ends (the CLI's ``--wait``).

    With ``?flow=1`` it also follows the operations its job queued in the same flow (the
    retention that follows a backup), so ``backup --wait`` returns when the whole run is done.
    """
    engine = engine_of(request)
    first = await engine.store.find_operation(request.match_info["id"])
    whole_flow = request.query.get("flow") == "1"
    resp = await ndjson(request)

    async def current() -> dict[int, Any]:
        if not whole_flow:
            return {first.pk: await engine.store.get_operation(first.pk)}
        ops = await engine.list_operations(
            OpFilter(origin=first.origin, flow_id=first.flow_id), limit=1000
        )
        return {op.pk: op for op in ops}

    with engine.bus.subscribe("operation") as sub:
        known = await current()
        for op in sorted(known.values(), key=lambda o: o.pk):
            await send(resp, OpRecord.of(op))
        while True:
            if all(OpStatus(op.status).finished for op in known.values()):
                # Re-read: a job may have queued a follow-up just before it finished.
                fresh = await current()
                new = [op for pk, op in fresh.items() if pk not in known]
                known = fresh
                for op in new:
                    await send(resp, OpRecord.of(op))
                if all(OpStatus(op.status).finished for op in known.values()):
                    break
            event = await keepalive(sub, resp)
            if event is None:
                continue
            if sub.lagged:
                sub.lagged = False
                known = await current()
                continue
            changed = getattr(event, "op", None)
            if changed is None or changed.origin != first.origin:
                continue
            if changed.pk in known or (whole_flow and changed.flow_id == first.flow_id):
                known[changed.pk] = changed
                await send(resp, OpRecord.of(changed))
    await resp.write_eof()
    return resp


async def follow_ops(request: web.Request) -> web.StreamResponse:
    """Stream every operation change as NDJSON (``ops --follow``, the tray when attached)."""
    engine = engine_of(request)
    resp = await ndjson(request)
    with engine.bus.subscribe("operation") as sub:
        while True:
            event = await keepalive(sub, resp)
            if event is None:
                continue
            op = getattr(event, "op", None)
            if op is not None:
                await send(resp, OpRecord.of(op))


def event_line(event: Event) -> ServerEvent | None:
    """The ``/v1/events`` line for a bus event (``None``: not one clients follow)."""
    if isinstance(event, OperationChanged) and event.op is not None:
        return OperationEvent(op=OpRecord.of(event.op))
    if isinstance(event, LinkStateChanged):
        return LinkEvent(peer=event.peer_id, state=event.state, reason=event.reason)
    if isinstance(event, ConfigChanged):
        return ConfigEvent(what=event.what, id=event.id)
    if isinstance(event, PlanStale):
        return StaleEvent(plan=event.plan_id, last_success_at=iso_time(event.last_success_at))
    if isinstance(event, Notice):
        return NoticeEvent(level=event.level, message=event.message)
    if isinstance(event, WindowWanted):
        return PresentEvent()
    if isinstance(event, SnapshotsChanged):
        return SnapshotsEvent(repo=event.repo_id, reason=event.reason, origin=event.origin)
    if isinstance(event, SharesReceived) and event.result is not None:
        r = event.result
        return SharesEvent(
            origin=event.origin,
            added=list(r.added),
            updated=list(r.updated),
            removed=list(r.removed),
            disabled_plans=list(r.disabled_plans),
            skipped=dict(r.skipped),
            refused=list(r.refused),
        )
    # Operations gone (our gc, or a peer's reaching us): views drop them by reloading.
    if isinstance(event, OperationsDeleted) and event.ops:
        return OpsDeletedEvent(origin=event.origin, count=len(event.ops))
    if isinstance(event, OpsSynced) and event.deleted:
        return OpsDeletedEvent(origin=event.peer_id, count=event.deleted)
    if isinstance(event, RemoteRequestChanged) and event.request is not None:
        return RemoteEvent(request=request_record(event.request))
    return None


async def events(request: web.Request) -> web.StreamResponse:
    """Every event as NDJSON: first the current link state of each peer, then live changes.

    Subscribing before reading the current state means nothing falls between the two. A
    desktop window says ``?ui=1``: while it follows, a second launch brings it up
    (:func:`present`) instead of opening another.
    """
    engine = engine_of(request)
    resp = await ndjson(request)
    windows = request.app[WINDOWS_KEY]
    is_window = request.query.get("ui") == "1"
    with engine.bus.subscribe() as sub, contextlib.ExitStack() as counted:
        if is_window:
            windows[0] += 1

            def uncount() -> None:
                windows[0] -= 1

            counted.callback(uncount)
        # Tells a client the subscription is live: whatever it does after this line is seen.
        await send(resp, Ready())
        for peer in await engine.store.list_peers():
            await send(resp, LinkEvent(peer=peer.id, state=peer.state, reason=peer.state_reason))
        while True:
            event = await keepalive(sub, resp)
            if event is None:
                continue
            line = event_line(event)
            if line is not None:
                await send(resp, line)
