"""Fixtures of the e2e layer: real ``peerstash --no-gui`` processes and the real CLI, as a
person would run them (:class:`NodeProc` and ``node_factory`` are in tests/fixtures/processes.py).
"""

from __future__ import annotations

import pytest

from tests.fixtures.processes import NodeProc, node_factory

__all__ = ["node_factory"]  # the fixture, for every e2e test


@pytest.fixture
def node(node_factory: callable) -> NodeProc:  # type: ignore[valid-type]
    return node_factory("alpha").start()
