"""Where a node keeps its files, and where its admin socket lives.

One data directory, one node. The admin socket normally sits in the data directory, but a Unix
socket path is limited to about 107 bytes, and test or container paths are often longer; then
the socket goes to a short per-user runtime directory under a name derived from the data
directory, so the node and every client compute the same place without coordination.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import platformdirs

SOCKET_NAME = "admin.sock"
_MAX_SOCKET_PATH = 100


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("peerstash", appauthor=False))


def resolve_data_dir(arg: str | None) -> Path:
    """``--data-dir``, else ``$PEERSTASH_DATA_DIR``, else the platform's data directory."""
    raw = arg or os.environ.get("PEERSTASH_DATA_DIR") or str(default_data_dir())
    return Path(raw).expanduser().resolve()


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and len(base) < 60 and os.path.isdir(base):
        return Path(base) / "peerstash"
    return Path(tempfile.gettempdir()) / f"peerstash-{os.getuid()}"


def admin_socket_path(data_dir: Path) -> Path:
    direct = data_dir / SOCKET_NAME
    if len(str(direct)) <= _MAX_SOCKET_PATH:
        return direct
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:20]
    return runtime_dir() / f"{digest}.sock"
