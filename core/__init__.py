"""Peerstash's backup engine: store, restic wrapper, runner and scheduler.

Nothing here may import Qt or HTTP code: the same engine runs under the tray, headless, and in
tests, and the peer layer builds on it rather than the other way round.

``__version__`` has one source, pyproject.toml's ``[project] version``: read from the installed
distribution's metadata (pip, the editable checkout and the .deb's bundled wheel all carry it),
or from pyproject.toml itself when the package runs from a checkout that was never installed.
The .deb's Version adds a Debian revision to it (briefcase.toml, ``revision``).

Every CLI call imports this package, so the metadata is first read directly (the
``peerstash-*.dist-info/METADATA`` on ``sys.path``, as :mod:`importlib.metadata` would find it):
importing :mod:`importlib.metadata` alone costs more than the whole ``peerstash --version``
budget (see docs/benchmarks.md, "CLI start-up"). It is the fallback for any other layout.
"""

import os as _os
import sys as _sys


def _dist_info_version() -> str | None:
    """``Version:`` of the first ``peerstash-*.dist-info`` on ``sys.path``, or None."""
    for entry in _sys.path:
        try:
            names = _os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if not (name.lower().startswith("peerstash-") and name.endswith(".dist-info")):
                continue
            try:
                with open(_os.path.join(entry, name, "METADATA"), encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("Version:"):
                            return line.partition(":")[2].strip()
                        if not line.strip():  # the headers end at the first blank line
                            break
            except OSError:
                pass
    return None


def _version() -> str:
    found = _dist_info_version()
    if found:
        return found
    from importlib import metadata as _metadata

    try:
        return _metadata.version("peerstash")
    except _metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            with pyproject.open("rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()


def installed_version() -> str:
    """The version installed now, read again from disk: it differs from ``__version__`` once
    the package was upgraded under this running process (a restart is then due)."""
    return _version()
