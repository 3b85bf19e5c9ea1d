"""Peerstash's backup engine: store, restic wrapper, runner and scheduler.

Nothing here may import Qt or HTTP code: the same engine runs under the tray, headless, and in
tests, and the peer layer builds on it rather than the other way round.

``__version__`` has one source, pyproject.toml's ``[project] version``: read from the installed
distribution's metadata (pip, the editable checkout and the .deb's bundled wheel all carry it),
or from pyproject.toml itself when the package runs from a checkout that was never installed.
The .deb's Version adds a Debian revision to it (briefcase.toml, ``revision``).
"""

from importlib import metadata as _metadata


def _version() -> str:
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
