"""The desktop's view of the node: the admin API, nothing else.

The tray and every page talk to the node through :class:`DesktopClient`, an
:class:`~peerstash.peer.cli.AdminClient` that also tells *why* a call failed (its HTTP status and
the field it is about), so a page can put a refusal under the right input. The tray and the node
come from one package, so every endpoint here exists on the node (docs/architecture.md, "Version
skew"). This module knows no Qt, so it is usable (and testable) without a display.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from peerstash.peer.cli import AdminClient, CliError


class ApiError(Exception):
    """A call the node refused or could not answer, worded for a person (``str(exc)``)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        #: The request field the node said the refusal is about (its ``"field"``), if any.
        self.field = field


#: The error text aiohttp gives for a route that does not exist (through the node's middleware).
_NO_ROUTE = {"Not Found", "Method Not Allowed"}


def refusal(status: int, raw: bytes) -> ApiError:
    """The error for an HTTP error answer: the node's sentence and the field it is about."""
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    msg = data.get("error") if isinstance(data, dict) else None
    if status in (404, 405) and (msg is None or msg in _NO_ROUTE):
        # Only a node of another version lacks a route: the overview says a restart is due.
        return ApiError("the node does not know this request (it runs another version)", status)
    field = data.get("field") if isinstance(data, dict) else None
    return ApiError(
        str(msg) if msg else f"the node answered HTTP {status}",
        status,
        field if isinstance(field, str) else None,
    )


def q(value: str) -> str:
    """Quote one path segment (plan, repo and op ids are safe today; this keeps it so)."""
    return quote(value, safe="")


def query(params: Mapping[str, Any]) -> str:
    """``?a=1&b=2`` from the non-empty values of ``params`` (empty string if none)."""
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(clean) if clean else ""


class DesktopClient(AdminClient):
    """The admin client with status-aware errors, for views that must react to them."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._lock = asyncio.Lock()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON call; a refusal or failure raises :class:`ApiError`."""
        if self._session is None:
            raise ApiError("not connected to the node")
        if not self.socket.exists():
            raise ApiError(str(self._not_running()))
        try:
            self.check_socket()
        except CliError as exc:
            raise ApiError(str(exc)) from None
        try:
            async with self._session.request(method, f"http://node{path}", json=body) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise refusal(resp.status, raw)
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return None
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError):
            raise ApiError(str(self._not_running())) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            raise ApiError("the node closed the connection (did it stop?)") from None

    async def lines(
        self,
        path: str,
        on_open: Callable[[], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield the objects of an NDJSON stream (keep-alive ``{}`` lines skipped).

        ``on_open`` runs once the node has answered, before the first object: a view that must
        not miss a change subscribes first and then loads the current state in that callback.
        ``idle_timeout``: for a stream the node keeps alive, how long a silence (no line, not
        even a keep-alive) means the stream is stuck; :class:`ApiError` then, so the caller
        reopens it instead of showing a frozen picture.
        """
        if self._session is None:
            raise ApiError("not connected to the node")
        if not self.socket.exists():
            raise ApiError(str(self._not_running()))
        try:
            self.check_socket()
        except CliError as exc:
            raise ApiError(str(exc)) from None
        try:
            async with self._session.get(f"http://node{path}") as resp:
                if resp.status >= 400:
                    raise refusal(resp.status, await resp.read())
                if on_open is not None:
                    on_open()
                while True:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that arrives as the line does, and the reader then never
                    # stops (a window that quits would wait on it for ever).
                    try:
                        async with asyncio.timeout(idle_timeout):
                            line = await resp.content.readline()
                    except TimeoutError:
                        raise ApiError(
                            f"the node's stream {path} said nothing for {idle_timeout:g}s"
                        ) from None
                    if not line:
                        return
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if obj:
                        yield obj
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError):
            raise ApiError(str(self._not_running())) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            raise ApiError("the node closed the connection (did it stop?)") from None


async def node_answers(data_dir: Path, wait: float = 2.0) -> bool:
    """True when a node already serves the admin socket of ``data_dir``.

    A socket file left by a node that died does not count: we ask ``/v1/status``.
    """
    client = DesktopClient(data_dir)
    if not client.socket.exists():
        return False
    async with client:
        with contextlib.suppress(ApiError, TimeoutError, OSError, aiohttp.ClientError):
            await asyncio.wait_for(client.request("GET", "/v1/status"), wait)
            return True
    return False


# -- peers -----------------------------------------------------------------------------------


class PeersApi:
    """Everything the Peers page and the tray's Peers menu ask the node, in one place."""

    #: The grants one side can give the other (DESIGN.md, "Permissions").
    GRANTS = ("ops", "config.read", "config.write", "repos.receive", "run")

    def __init__(self, client: DesktopClient) -> None:
        self.client = client

    async def peers(self) -> list[dict[str, Any]]:
        """Known hosts (``role`` ``known_host``) and authorized clients, with their ``state``."""
        return list(await self.client.request("GET", "/v1/peers") or [])

    async def discovered(self) -> list[dict[str, Any]]:
        """Peerstash instances announced on the LAN (zeroconf), with ``paired``/``key_matches``."""
        return list(await self.client.request("GET", "/v1/discovered") or [])

    async def tokens(self) -> list[dict[str, Any]]:
        return list(await self.client.request("GET", "/v1/tokens") or [])

    async def create_token(
        self, label: str, ttl: str, max_uses: int, grants: list[str]
    ) -> dict[str, Any]:
        """A new pairing token; its ``token`` text is shown once and never again."""
        body = {"label": label, "ttl": ttl, "max_uses": max_uses, "grants": grants}
        return dict(await self.client.request("POST", "/v1/tokens", body))

    async def delete_token(self, token_id: str) -> None:
        await self.client.request("DELETE", f"/v1/tokens/{q(token_id)}")

    async def pair(self, token: str, url: str, grants: list[str]) -> dict[str, Any]:
        """Dial the issuer at ``url`` with its token; ``grants`` are what we give it."""
        body = {"token": token, "url": url, "grants": grants}
        return dict(await self.client.request("POST", "/v1/peers", body))

    async def check(self, peer_id: str) -> dict[str, Any]:
        return dict(await self.client.request("POST", f"/v1/peers/{q(peer_id)}/check", {}))

    async def set_grants(self, peer_id: str, grants: list[str]) -> dict[str, Any]:
        """Replace what we grant ``peer_id`` (entries like ``ops`` or ``run:plan:x,!repo:y``)."""
        body = {"grants": grants}
        return dict(await self.client.request("PATCH", f"/v1/peers/{q(peer_id)}", body))

    async def remove(self, peer_id: str) -> None:
        await self.client.request("DELETE", f"/v1/peers/{q(peer_id)}")
