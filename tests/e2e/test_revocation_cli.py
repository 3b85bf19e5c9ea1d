"""`peer remove` and the peer history limits, as a person types them, between two real
`peerstash --no-gui` processes."""

from __future__ import annotations

from typing import Any

from tests.fixtures.cli import FAST, pair, peers, wait_link


def test_peer_remove_keep_history_and_history_settings(node_factory: Any) -> None:
    a = node_factory("alpha", PEERSTASH_LINK_TIMINGS=FAST).start()
    b = node_factory("beta", PEERSTASH_LINK_TIMINGS=FAST).start()
    pair(a, b, "ops")
    wait_link(a, "beta", "online")
    wait_link(b, "alpha", "online")

    # The limits: whole numbers, said back; anything else is one clear line and exit 1.
    out = b.cli("settings", "set", "peer_history_max_ops", "150_000").stdout
    assert "applies as peers' operations arrive" in out
    bad = b.cli("settings", "set", "peer_history_days", "ninety", check=False)
    assert bad.returncode == 1 and "peer_history_days is a whole number" in bad.stderr
    zero = b.cli("settings", "set", "peer_history_days", "0", check=False)
    assert zero.returncode == 1 and "from 1 to 36500" in zero.stderr
    shown = b.cli("settings").stdout
    assert "peer_history_max_ops: 150000" in shown

    out = b.cli("peer", "remove", "alpha", "--keep-history").stdout
    assert "peer alpha removed and told so" in out and "history is kept" in out
    wait_link(a, "beta", "auth failed")
    listed = a.cli("peer", "list").stdout
    assert "auth failed (removed by beta)" in listed
    checked = a.cli("peer", "check", "beta").stdout
    assert "beta removed this node, so it is not dialed again" in checked
    assert peers(a)["beta"]["state_reason"] == "removed by beta"
    assert "alpha" not in peers(b)
