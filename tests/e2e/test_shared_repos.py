"""Shared repositories between two real `peerstash --no-gui` processes, driven by the CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tests.fixtures.cli import FAST, Events, status, wait_link
from tests.fixtures.processes import NodeProc

PASSWORD = "e2e-shared-Qw7Rt5-never-in-clear"


def jcli(node: NodeProc, *args: str, **kw: Any) -> Any:
    return json.loads(node.cli(*args, "--json", **kw).stdout)


def until_shares(node: NodeProc, act: Any, want: Any, timeout: float = 30) -> dict[str, Any]:
    """Run ``act()`` with the node's event stream open; the first ``shares`` event (a peer's
    set applied here) for which ``want(event)`` holds. The stream is bounded by a timer."""
    events = Events(node)
    timer = threading.Timer(timeout, events.close)
    timer.start()
    try:
        lines = events.lines()
        assert next(lines) == {"type": "ready"}
        act()
        for ev in lines:
            if ev.get("type") == "shares" and want(ev):
                return ev
        raise AssertionError("event stream ended before the shared repositories arrived")
    finally:
        timer.cancel()
        events.close()


def test_share_reaches_the_granting_peer(node_factory: Any, tmp_path: Path) -> None:
    alpha = node_factory("alpha", PEERSTASH_LINK_TIMINGS=FAST).start()
    beta = node_factory("beta", PEERSTASH_LINK_TIMINGS=FAST).start()
    # beta dials alpha with alpha's token and grants alpha repos.receive.
    tok = jcli(alpha, "token", "create", "--grant", "ops")["token"]
    url = status(alpha)["peer_url"]
    beta.cli("peer", "add", tok, "--url", url, "--grant", "repos.receive")
    wait_link(alpha, "beta", "online")
    repo = str(tmp_path / "repo")
    alpha.cli(
        "repo", "add", "photos", "--uri", repo, "--password-stdin", "--init", input=PASSWORD + "\n"
    )

    ev = until_shares(
        beta,
        lambda: alpha.cli("repo", "share", "photos", "--client-uri", repo),
        lambda ev: ev["added"] == ["photos@alpha"],
    )
    assert ev["origin"] == "alpha"
    owner = jcli(alpha, "repo", "list")
    assert owner[0]["shared"] is True and owner[0]["client_uri"] == repo
    assert owner[0]["origin"] is None and owner[0]["read_only"] is False
    listed = jcli(beta, "repo", "list")
    assert [(r["id"], r["origin"], r["read_only"], r["uri"]) for r in listed] == [
        ("photos@alpha", "alpha", True, repo)
    ]
    assert listed[0]["guid"] == owner[0]["guid"] and listed[0]["password_source"] == "secret"
    assert jcli(beta, "snapshots", "photos@alpha") == []  # opens with the password it got

    res = beta.cli("repo", "edit", "photos@alpha", "--uri", "/elsewhere", check=False)
    assert res.returncode == 1 and "shared by alpha and read-only here" in res.stderr
    res = beta.cli("prune", "photos@alpha", check=False)
    assert res.returncode == 1 and "prune is done by its owner" in res.stderr
    # forget is allowed there (on beta's own snapshots), but beta has no plan with a policy.
    res = beta.cli("forget", "photos@alpha", "--dry-run", check=False)
    assert res.returncode == 1 and "no plan on repository 'photos@alpha'" in res.stderr

    ev = until_shares(
        beta,
        lambda: alpha.cli("repo", "unshare", "photos"),
        lambda ev: ev["removed"] == ["photos@alpha"],
    )
    assert jcli(beta, "repo", "list") == []
    for node in (alpha, beta):
        for out in (node.cli("repo", "list", "--json").stdout, "\n".join(node.output)):
            assert PASSWORD not in out
