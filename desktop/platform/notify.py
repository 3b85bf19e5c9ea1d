"""Desktop notifications: the desktop's notification service, Qt's tray balloon otherwise.

On Linux desktops (GNOME, KDE, XFCE, dunst, mako, …) notifications belong to the service
``org.freedesktop.Notifications`` on the session bus; it shows them whether or not there is a
tray (stock GNOME has none), keeps them in its history and follows the desktop's "do not
disturb". Qt's ``QSystemTrayIcon.showMessage`` needs a visible tray icon, so it is only the
fallback: no session bus, no service on it, or the service refused the call.

Why jeepney and not QtDBus: ``Notify``'s signature is ``susssasa{sv}i`` and every real server
checks it (GDBus-based dunst and GNOME Shell answer "Type of message ``(sisssava{sv}i)`` does
not match expected type ``(susssasa{sv}i)``"; Plasma's QtDBus adaptor refuses it too). PySide6's
QtDBus cannot send a ``uint32`` for ``replaces_id`` (a Python ``int`` becomes ``int32``, and
``QDBusArgument << int`` picks ``uint16``), so the call is built with jeepney, a small
pure-Python D-Bus library, with the signature spelled out. It runs on the asyncio loop (qasync),
bounded by a timeout, so a stuck bus never blocks the window.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from peerstash.desktop.tasks import Tasks

log = logging.getLogger(__name__)

SERVICE = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
APP_NAME = "Peerstash"
#: How long a notification stays up (ms), as the spec's ``expire_timeout``.
EXPIRE_MS = 10_000
#: The longest a call to the notification service may take before the balloon is used.
CALL_TIMEOUT = 3.0
#: Freedesktop urgency levels (the ``urgency`` hint, a byte).
URGENCY_NORMAL, URGENCY_CRITICAL = 1, 2

#: Where a notification went: the notification service, the tray balloon, or nowhere.
ROUTE_DBUS, ROUTE_BALLOON, ROUTE_NONE = "dbus", "balloon", "none"

#: ``(summary, body, critical)`` → whether the tray balloon showed it.
Balloon = Callable[[str, str, bool], bool]


class NotifyError(Exception):
    """The notification service could not be reached or refused the call."""


async def dbus_notify(
    summary: str,
    body: str,
    *,
    critical: bool = False,
    bus: str = "SESSION",
    timeout: float = CALL_TIMEOUT,  # noqa: ASYNC109 - one bound around connect and call
) -> int:
    """Send one notification to ``org.freedesktop.Notifications``; return the server's id.

    ``bus`` is ``"SESSION"`` (``$DBUS_SESSION_BUS_ADDRESS``) or a D-Bus address. Raises
    :class:`NotifyError` when there is no bus, no service, or an error reply.
    """
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.asyncio import open_dbus_router
    from jeepney.wrappers import DBusErrorResponse, unwrap_msg

    address = DBusAddress(OBJECT_PATH, bus_name=SERVICE, interface=SERVICE)
    hints = {
        "urgency": ("y", URGENCY_CRITICAL if critical else URGENCY_NORMAL),
        "desktop-entry": ("s", "peerstash"),
    }
    icon = "dialog-error" if critical else "dialog-warning"
    message = new_method_call(
        address,
        "Notify",
        "susssasa{sv}i",
        (APP_NAME, 0, icon, summary, body, [], hints, EXPIRE_MS),
    )
    try:
        async with asyncio.timeout(timeout):
            async with open_dbus_router(bus=bus) as router:
                reply = await router.send_and_get_reply(message)
        (notification_id,) = unwrap_msg(reply)
    except DBusErrorResponse as exc:
        raise NotifyError(f"{exc.name}: {' '.join(map(str, exc.data))}") from None
    except TimeoutError:
        raise NotifyError(f"no answer from the session bus within {timeout:g}s") from None
    except (OSError, KeyError, ValueError) as exc:  # no bus, bad address, broken reply
        raise NotifyError(f"no session bus ({exc})") from None
    return int(notification_id)


def session_bus_configured() -> bool:
    """A session bus address is set (without one, jeepney would guess ``/run/user/UID/bus``)."""
    return bool(os.environ.get("DBUS_SESSION_BUS_ADDRESS"))


class Notifier(QObject):
    """Routes each notification: the notification service first, the balloon as fallback.

    Sending is asynchronous (a task on the loop); :attr:`delivered` says where it went, which
    is what the tests and the log follow.
    """

    #: (route, summary, body): ``dbus``, ``balloon`` or ``none`` (neither was available).
    delivered = Signal(str, str, str)

    def __init__(
        self,
        balloon: Balloon | None = None,
        parent: QObject | None = None,
        *,
        bus: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        super().__init__(parent)
        self.balloon = balloon
        #: The bus address; None: the session bus when one is configured, else none at all.
        self.bus = bus
        self.timeout = timeout
        self.tasks = Tasks(on_error=lambda exc: log.warning("notification failed: %s", exc))
        #: The last reason the notification service was not used (for the log and tests).
        self.last_dbus_error = ""

    def send(self, summary: str, body: str, *, critical: bool = False) -> None:
        self.tasks.spawn(self.deliver(summary, body, critical=critical), name="notify")

    async def deliver(self, summary: str, body: str, *, critical: bool = False) -> str:
        """Show one notification; return the route it took."""
        route = ROUTE_NONE
        bus = self.bus or ("SESSION" if session_bus_configured() else None)
        if bus is not None:
            try:
                await dbus_notify(summary, body, critical=critical, bus=bus, timeout=self.timeout)
            except NotifyError as exc:
                self.last_dbus_error = str(exc)
                log.info("desktop notification service not used: %s", exc)
            else:
                route = ROUTE_DBUS
        else:
            self.last_dbus_error = "no session bus"
        if (
            route == ROUTE_NONE
            and self.balloon is not None
            and self.balloon(summary, body, critical)
        ):
            route = ROUTE_BALLOON
        self.delivered.emit(route, summary, body)
        return route

    async def close(self) -> None:
        await self.tasks.close()
