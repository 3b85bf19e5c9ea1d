"""Where a node keeps its files, and where its admin socket lives.

One data directory, one node. The admin socket normally sits in the data directory, but a Unix
socket path is limited to about 107 bytes, and test or container paths are often longer; then
the socket goes to a short per-user runtime directory under a name derived from the data
directory, so the node and every client compute the same place without coordination.

That runtime directory may sit in a place every user can write (``/tmp``), so another user can
create it first, or put a socket of their own where ours is expected, and collect what a client
sends (a repository password). Hence: the node creates it ``0700`` and refuses one that is not
its own (:func:`ensure_own_private_dir`), and every client checks the socket and its directory
(:func:`socket_trouble`) *before* it connects, wherever the socket is.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

# hashlib, tempfile and platformdirs are imported where they are used: every CLI call imports
# this module, most of them need none of the three (docs/benchmarks.md, "CLI start-up").

SOCKET_NAME = "admin.sock"
_MAX_SOCKET_PATH = 100


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("peerstash", appauthor=False))


def resolve_data_dir(arg: str | None) -> Path:
    """``--data-dir``, else ``$PEERSTASH_DATA_DIR``, else the platform's data directory."""
    raw = arg or os.environ.get("PEERSTASH_DATA_DIR") or str(default_data_dir())
    return Path(raw).expanduser().resolve()


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def ensure_own_private_dir(path: Path) -> None:
    """Create ``path`` (mode ``0700``) or accept it only if it is a real directory of ours.

    Unlike :func:`ensure_private_dir` this never changes a directory someone else made (even as
    root, whose ``chmod`` would succeed): a symlink, or a directory of another user, is refused
    with :class:`PermissionError` and left as it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} is not a directory (a symlink?); remove it or fix it")
    if st.st_uid != os.geteuid():
        raise PermissionError(
            f"{path} belongs to another user (uid {st.st_uid}); remove it or set $XDG_RUNTIME_DIR"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)


def socket_trouble(sock: Path) -> str | None:
    """Why a client must not talk to the admin socket ``sock``, or None when it may.

    The socket and its directory must belong to us (our effective uid), the directory must be
    a real directory that only we can use (mode ``0700``: no one else can put a socket there or
    swap ours) and the socket a real socket that group and others cannot open. Anything else
    may be another user's listener waiting for what we send.
    """
    try:
        dst = os.lstat(sock.parent)
        sst = os.lstat(sock)
    except FileNotFoundError:
        return None  # nothing to talk to: the caller says "not running"
    uid = os.geteuid()
    where = f"the admin socket {sock}"
    if not stat.S_ISDIR(dst.st_mode):
        return f"refusing to use {where}: its directory is not a real directory"
    if dst.st_uid != uid:
        return f"refusing to use {where}: its directory belongs to another user (uid {dst.st_uid})"
    if stat.S_IMODE(dst.st_mode) & 0o077:
        return (
            f"refusing to use {where}: its directory has mode {stat.S_IMODE(dst.st_mode):04o}, "
            "others could replace the socket (it must be 0700)"
        )
    if not stat.S_ISSOCK(sst.st_mode):
        return f"refusing to use {where}: it is not a socket"
    if sst.st_uid != uid:
        return f"refusing to use {where}: it belongs to another user (uid {sst.st_uid})"
    if stat.S_IMODE(sst.st_mode) & 0o077:
        return (
            f"refusing to use {where}: it has mode {stat.S_IMODE(sst.st_mode):04o}, "
            "group or others can open it (it must be 0600)"
        )
    return None


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and len(base) < 60 and os.path.isdir(base):
        return Path(base) / "peerstash"
    import tempfile

    return Path(tempfile.gettempdir()) / f"peerstash-{os.getuid()}"


def admin_socket_path(data_dir: Path) -> Path:
    direct = data_dir / SOCKET_NAME
    if len(str(direct)) <= _MAX_SOCKET_PATH:
        return direct
    import hashlib

    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:20]
    return runtime_dir() / f"{digest}.sock"
