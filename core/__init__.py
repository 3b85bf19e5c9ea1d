"""Peerstash's backup engine: store, restic wrapper, runner and scheduler.

Nothing here may import Qt or HTTP code: the same engine runs under the tray, headless, and in
tests, and the peer layer builds on it rather than the other way round.
"""

__version__ = "0.1.0"
