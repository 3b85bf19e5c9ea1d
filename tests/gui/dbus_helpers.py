"""A private session bus and a small but real notification server on it, for the tray tests.

The bus is a real ``dbus-daemon --session`` (never the developer's own session bus, which would
get test notifications). The server is a real D-Bus service: it owns
``org.freedesktop.Notifications`` on that bus and answers ``Notify`` the way the spec says,
recording what it received, including the signature the caller used (real servers such as
dunst refuse any other than ``susssasa{sv}i``, and so does this one).
"""

from __future__ import annotations

import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVICE = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
NOTIFY_SIGNATURE = "susssasa{sv}i"


def need(tool: str) -> str:
    """The path of ``tool``; a missing tool fails the test (scripts/setup --test installs it)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/setup --test (it installs it)")
    return path


#: A session bus like the standard one, without service activation: installed services
#: (dunst's activation file, say) must not start behind a test's back.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@contextmanager
def session_bus(timeout: float = 10.0) -> Iterator[str]:
    """A fresh session ``dbus-daemon``; yields its address, stops it after."""
    tmp = Path(tempfile.mkdtemp(prefix="peerstash-bus-"))
    config = tmp / "session.conf"
    config.write_text(BUS_CONFIG.format(dir=tmp))
    proc = subprocess.Popen(
        [
            need("dbus-daemon"),
            f"--config-file={config}",
            "--nofork",
            "--nopidfile",
            "--print-address=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"dbus-daemon printed no address within {timeout}s")
        address = proc.stdout.readline().decode().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Received:
    signature: str
    args: tuple[Any, ...]

    @property
    def summary(self) -> str:
        return str(self.args[3])

    @property
    def body(self) -> str:
        return str(self.args[4])


@dataclass
class NotificationServer:
    """Owns ``org.freedesktop.Notifications`` on ``address`` in a thread until stopped."""

    address: str
    received: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    _stop: bool = False
    _thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> NotificationServer:
        owned = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(owned,), daemon=True)
        self._thread.start()
        if not owned.wait(timeout):
            pytest.fail(f"the test notification server did not own {SERVICE} in {timeout}s")
        return self

    def _serve(self, owned: threading.Event) -> None:
        from jeepney import MessageType, new_error, new_method_return
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        conn = open_dbus_connection(bus=self.address)
        try:
            reply = conn.send_and_get_reply(message_bus.RequestName(SERVICE, 0x4))
            assert reply.body == (1,), reply.body  # primary owner
            owned.set()
            next_id = 1
            while not self._stop:
                try:
                    msg = conn.receive(timeout=0.2)
                except TimeoutError:
                    continue
                h = msg.header
                if h.message_type != MessageType.method_call:
                    continue
                from jeepney import HeaderFields

                member = h.fields.get(HeaderFields.member)
                sig = h.fields.get(HeaderFields.signature, "")
                if member == "Notify":
                    if sig != NOTIFY_SIGNATURE:
                        conn.send(
                            new_error(
                                msg,
                                "org.freedesktop.DBus.Error.InvalidArgs",
                                "s",
                                (f"signature {sig!r}, expected {NOTIFY_SIGNATURE!r}",),
                            )
                        )
                        continue
                    with self.changed:
                        self.received.append(Received(sig, msg.body))
                        self.changed.notify_all()
                    conn.send(new_method_return(msg, "u", (next_id,)))
                    next_id += 1
                elif member == "GetCapabilities":
                    conn.send(new_method_return(msg, "as", (["body"],)))
                elif member == "GetServerInformation":
                    conn.send(new_method_return(msg, "ssss", ("test", "peerstash", "1", "1.2")))
                else:
                    conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod"))
        finally:
            conn.close()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Block (a thread condition, not a poll) until ``count`` notifications arrived."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.received)} notifications arrived, wanted {count}"
                    )
                self.changed.wait(left)
            return list(self.received)

    def stop(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(10)
