"""Two and three real `peerstash --no-gui` processes pairing and holding links over 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import threading
from typing import Any

from tests.fixtures.cli import FAST, Events, pair, peers, status, wait_link
from tests.fixtures.processes import NodeProc


def test_two_nodes_pair_drop_and_heal(node_factory: Any) -> None:
    a = node_factory("alpha", PEERSTASH_LINK_TIMINGS=FAST).start()
    b = node_factory("beta", PEERSTASH_LINK_TIMINGS=FAST).start()
    st_b = status(b)
    assert st_b["key_id"] and st_b["peer_url"].startswith("http://127.0.0.1:")
    paired = pair(a, b, "ops", "run:plan:nightly")
    assert paired["id"] == "beta" and paired["key_id"] == st_b["key_id"]
    wait_link(a, "beta", "online")
    wait_link(b, "alpha", "online")
    on_b = peers(b)["alpha"]
    assert on_b["role"] == "authorized_client" and on_b["grants"] == ["ops:*", "run:plan:nightly"]
    assert on_b["key_id"] == status(a)["key_id"] and on_b["last_seen"]
    on_a = peers(a)["beta"]
    assert on_a["role"] == "known_host" and on_a["state"] == "online"

    # Kill the dialing side: the other sees it offline, then online again after a restart,
    # with no new pairing.
    a.stop(signal.SIGKILL)
    wait_link(b, "alpha", "offline")
    a.start()
    wait_link(a, "beta", "online")
    wait_link(b, "alpha", "online")

    # Restart the accepting side on the same port: the dialer finds it again.
    port = status(b)["peer_url"].rsplit(":", 1)[1]
    b.stop(signal.SIGTERM)
    # The dialer retries at once: by the time we look it may be past offline.
    wait_link(a, "beta", ("offline", "unreachable"))
    b.start("--listen", f"127.0.0.1:{port}")
    wait_link(a, "beta", "online")
    assert json.loads(b.cli("token", "list", "--json").stdout) == []

    # Revoke: the link closes at once and the dialer is told why (and stops dialing).
    b.cli("peer", "remove", "alpha")
    wait_link(a, "beta", "auth failed")
    assert peers(a)["beta"]["state_reason"] == "removed by beta"


def test_three_nodes_and_rejections(node_factory: Any) -> None:
    hub = node_factory("hub", PEERSTASH_LINK_TIMINGS=FAST).start()
    a = node_factory("a", PEERSTASH_LINK_TIMINGS=FAST).start()
    c = node_factory("c", PEERSTASH_LINK_TIMINGS=FAST).start()
    pair(a, hub, "ops")
    pair(c, hub, "config.read")
    wait_link(hub, "a", "online")
    wait_link(hub, "c", "online")
    assert set(peers(hub)) == {"a", "c"}

    # A used-up token: a clear message on the dialing side, nothing registered on the hub.
    tok = json.loads(hub.cli("token", "create", "--json").stdout)["token"]
    d = node_factory("d", PEERSTASH_LINK_TIMINGS=FAST).start()
    url = status(hub)["peer_url"]
    d.cli("peer", "add", tok, "--url", url)
    e = node_factory("e").start()
    res = e.cli("peer", "add", "-", "--url", url, input=tok + "\n", check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "peerstash: the pairing token was refused (wrong, expired or used up)"
    )
    assert "e" not in peers(hub)

    # A token shown to the wrong node: the key id pins the issuer.
    res = e.cli(
        "peer",
        "add",
        json.loads(hub.cli("token", "create", "--json").stdout)["token"],
        "--url",
        status(a)["peer_url"],
        check=False,
    )
    assert res.returncode == 1 and "not the one that issued this token" in res.stderr
    assert peers(a).keys() == {"hub"}

    # Garbage, a bad grant and a bad TTL are refused with words.
    res = e.cli("peer", "add", "not-a-token", "--url", url, check=False)
    assert res.returncode == 1 and "not a pairing token" in res.stderr
    res = hub.cli("token", "create", "--grant", "everything", check=False)
    assert res.returncode == 1 and "everything" in res.stderr
    res = hub.cli("token", "create", "--ttl", "forever", check=False)
    assert res.returncode == 1 and "--ttl" in res.stderr


def test_discover_and_pair_by_token_alone(node_factory: Any) -> None:
    lan = ("--discovery-interface", "127.0.0.1")
    a = node_factory("alpha", PEERSTASH_LINK_TIMINGS=FAST).start(*lan)
    b = node_factory("beta", PEERSTASH_LINK_TIMINGS=FAST).start(*lan)
    found = json.loads(a.cli("discover", "--timeout", "3", "--json").stdout)
    beta = next(f for f in found if f["id"] == "beta")
    assert beta["key_id"] == status(b)["key_id"] and beta["paired"] is False
    assert beta["addresses"] == ["127.0.0.1"] and beta["compatible"] is True
    tok = json.loads(b.cli("token", "create", "--json").stdout)["token"]
    a.cli("peer", "add", tok)  # no --url: found on the LAN by the token's id and key id
    wait_link(a, "beta", "online")
    found = json.loads(a.cli("discover", "--timeout", "0", "--json").stdout)
    assert next(f for f in found if f["id"] == "beta")["key_matches"] is True

    off = node_factory("quiet").start()  # tests start nodes with --no-discovery by default
    res = off.cli("discover", check=False)
    assert res.returncode == 1 and "discovery is off" in res.stderr


def test_fleet_history_reaches_a_granted_peer(node_factory: Any, tmp_path: Any) -> None:
    hub = node_factory("hub", PEERSTASH_LINK_TIMINGS=FAST).start()
    a = node_factory("laptop", PEERSTASH_LINK_TIMINGS=FAST).start()
    pair(a, hub, "ops")  # the hub lets the laptop see its operation history
    wait_link(a, "hub", "online")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("fleet\n")
    hub.cli(
        "repo",
        "add",
        "r",
        "--uri",
        str(tmp_path / "repo"),
        "--password-stdin",
        "--init",
        input="pw-for-fleet-test\n",
    )
    hub.cli("plan", "add", "--no-backup-now", "docs", "--repo", "r", "--path", str(src))
    events = Events(a)
    try:
        assert next(events.lines()) == {"type": "ready"}
        hub.cli("backup", "docs", "--wait")
        for ev in events.lines():
            op = ev.get("op") or {}
            if (
                ev.get("type") == "operation"
                and op.get("origin") == "hub"
                and op["status"] == "success"
            ):
                break
    finally:
        events.close()
    theirs = json.loads(a.cli("ops", "--origin", "hub", "--json").stdout)
    mine = json.loads(hub.cli("ops", "--json").stdout)
    assert [(o["id"], o["status"], o["snapshot_id"]) for o in theirs] == [
        (o["id"], o["status"], o["snapshot_id"]) for o in mine
    ]
    st = status(a)
    assert [(p["id"], p["state"]) for p in st["peers"]] == [("hub", "online")]
    assert st["peers"][0]["plans"][0]["plan"] == "docs"
    assert st["peers"][0]["plans"][0]["status"] == "success"
    assert peers(a)["hub"]["plans"][0]["snapshot_id"] == mine[0]["snapshot_id"]
    # The other way round nothing was granted: the hub sees none of the laptop's history.
    assert json.loads(hub.cli("ops", "--origin", "laptop", "--json").stdout) == []


def wait_remote_op(node: NodeProc, origin: str, act: Any) -> dict[str, Any]:
    """Run ``act`` and return the first operation of ``origin`` that ends, as ``node`` sees it
    (through its event stream, subscribed before ``act``: nothing is missed)."""
    events = Events(node)
    timer = threading.Timer(60, events.close)
    timer.start()
    try:
        assert next(events.lines()) == {"type": "ready"}
        act()
        for ev in events.lines():
            op = ev.get("op") or {}
            if op.get("origin") == origin and op["status"] not in ("pending", "running"):
                return dict(op)
        raise AssertionError(f"event stream ended before an operation of {origin} ended")
    finally:
        timer.cancel()
        events.close()


def test_a_peer_adds_a_plan_reads_a_remote_log_and_sees_the_result(
    node_factory: Any, tmp_path: Any
) -> None:
    hub = node_factory("hub", PEERSTASH_LINK_TIMINGS=FAST).start()
    laptop = node_factory("laptop", PEERSTASH_LINK_TIMINGS=FAST).start()
    pair(laptop, hub, "ops", "config.read:repo:r,repo:r3", "config.write:repo:r,repo:r3")
    wait_link(laptop, "hub", "online")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("remote plan\n")
    for repo in ("r", "other"):
        hub.cli(
            "repo",
            "add",
            repo,
            "--uri",
            str(tmp_path / repo),
            "--password-stdin",
            "--init",
            input="pw-remote-plan-test\n",
        )

    # The laptop adds a plan on the hub; the hub has it, the laptop lists it there.
    out = laptop.cli("plan", "add", "docs", "--on", "hub", "--repo", "r", "--path", str(src))
    assert out.stdout.startswith("plan docs added on hub")
    assert [p["id"] for p in json.loads(hub.cli("plan", "list", "--json").stdout)] == ["docs"]
    listed = json.loads(laptop.cli("plan", "list", "--on", "hub", "--json").stdout)
    assert [(p["id"], p["repo"], p["paths"]) for p in listed] == [("docs", "r", [str(src)])]
    repos = json.loads(laptop.cli("repo", "list", "--on", "hub", "--json").stdout)
    assert [r["id"] for r in repos] == ["r"]  # "other" is out of scope: absent
    assert "pw-remote-plan-test" not in json.dumps(repos)
    # Out of scope, and invalid: refused by the hub, in its words.
    res = laptop.cli(
        "plan", "add", "x", "--on", "hub", "--repo", "other", "--path", "/x", check=False
    )
    assert res.returncode == 1
    assert "hub: laptop has no 'config.write' grant for repository 'other' here" in res.stderr
    res = laptop.cli("plan", "edit", "docs", "--on", "hub", "--every", "often", check=False)
    assert res.returncode == 1 and res.stderr.startswith("peerstash: hub: ")
    # A repository added on the hub from the laptop: created there, the password only piped in.
    res = laptop.cli(
        "repo",
        "add",
        "r3",
        "--on",
        "hub",
        "--uri",
        str(tmp_path / "r3"),
        "--password-stdin",
        "--init",
        input="pw-sent-over-the-link\n",
    )
    assert re.fullmatch(
        r"repository r3 on hub: created a new repository[^\n]* \(id [0-9a-f]{8}\)\n", res.stdout
    )
    assert (tmp_path / "r3" / "config").is_file()
    # Changed from the laptop (the request path of `repo edit` here, under the hub's address).
    res = laptop.cli("repo", "edit", "r3", "--on", "hub", "--uri", str(tmp_path / "r3"))
    assert res.stdout == "repository r3 on hub changed; it opens with the new settings\n"
    res = laptop.cli("repo", "edit", "r3", "--on", "hub", check=False)
    assert (res.returncode, res.stderr) == (
        1,
        "peerstash: nothing to change: give --uri, --password-stdin or --env\n",
    )
    # A change that would run a program on the hub is refused there; the hub keeps the old one.
    res = laptop.cli("repo", "edit", "r3", "--on", "hub", "--password-command", "id", check=False)
    assert res.returncode == 1
    assert "hub: a peer may give a repository password only as a value" in res.stderr
    (r3,) = [r for r in json.loads(hub.cli("repo", "list", "--json").stdout) if r["id"] == "r3"]
    assert (r3["password_source"], r3["uri"]) == ("secret", str(tmp_path / "r3"))
    assert [r["id"] for r in json.loads(hub.cli("repo", "list", "--json").stdout)] == [
        "other",
        "r",
        "r3",
    ]
    listed_repos = laptop.cli("repo", "list", "--on", "hub").stdout
    assert "r3" in listed_repos and "pw-sent-over-the-link" not in listed_repos
    assert listed_repos.splitlines()[0].split() == ["ID", "URI", "PASSWORD", "GUID"]
    # What could run a program on the hub is refused there, in its words.
    res = laptop.cli(
        "repo", "add", "r3", "--on", "hub", "--uri", "/x", "--password-command", "id", check=False
    )
    assert res.returncode == 1
    assert "hub: a peer may give a repository password only as a value" in res.stderr
    res = laptop.cli(
        "repo",
        "add",
        "r4",
        "--on",
        "hub",
        "--uri",
        "rclone:x:y",
        "--password-stdin",
        input="pw\n",
        check=False,
    )
    assert res.returncode == 1
    assert "hub: laptop has no 'config.write' grant for repository 'r4' here" in res.stderr
    res = laptop.cli("repo", "remove", "r3", "--on", "hub")
    assert res.stdout == "repository r3 removed from hub (its data is untouched)\n"
    for line in hub.output + laptop.output:  # neither node logged it
        assert "pw-sent-over-the-link" not in line
    assert [r["id"] for r in json.loads(hub.cli("repo", "list", "--json").stdout)] == [
        "other",
        "r",
    ]

    # The hub runs it; the laptop reads the log from the hub and sees the result per plan.
    op = wait_remote_op(laptop, "hub", lambda: hub.cli("backup", "docs", "--wait"))
    assert op["status"] == "success"
    log = laptop.cli("log", op["id"]).stdout
    assert log == hub.cli("log", op["id"]).stdout
    assert "backup of plan docs (manual)" in log
    (entry,) = peers(laptop)["hub"]["plans"]
    assert (entry["plan"], entry["status"], entry["snapshot_id"]) == (
        "docs",
        "success",
        op["snapshot_id"],
    )
    assert "plan docs: last backup success" in laptop.cli("peer", "list").stdout

    # The laptop removes the plan again.
    laptop.cli("plan", "remove", "docs", "--on", "hub")
    assert json.loads(hub.cli("plan", "list", "--json").stdout) == []

    # The hub goes away: its logs are with it, and the laptop says so.
    hub.stop()
    # The dialer retries at once: by the time we look it may be past offline.
    wait_link(laptop, "hub", ("offline", "unreachable"))
    res = laptop.cli("log", op["id"], check=False)
    assert res.returncode == 1
    assert "the log of this operation is on hub, which is offline now" in res.stderr
