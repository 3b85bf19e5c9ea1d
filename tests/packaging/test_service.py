"""``peerstash service``: unit files and systemctl calls, against a fake ``systemctl`` on PATH."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from peerstash.peer import cli, systemd

ROOT = Path(__file__).resolve().parents[2]

FAKE_SYSTEMCTL = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_SYSTEMCTL_LOG"], "a") as f:
        f.write(json.dumps(args) + "\\n")
    mode = os.environ.get("FAKE_SYSTEMCTL_MODE", "ok")
    words = [a for a in args if not a.startswith("-")]
    verb = words[0] if words else ""
    if mode == "offline":
        if verb == "is-system-running":
            print("offline")
        else:
            print("System has not been booted with systemd as init system (PID 1). "
                  "Can't operate.", file=sys.stderr)
        sys.exit(1)
    if mode == "fail-enable" and verb == "enable":
        print("Failed to enable unit: Access denied", file=sys.stderr)
        sys.exit(1)
    answers = {{"is-system-running": "degraded", "is-enabled": "enabled", "is-active": "active"}}
    if verb in answers:
        print(answers[verb])
    sys.exit(1 if verb == "is-system-running" else 0)
    """
)


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``systemctl`` first on PATH that records its arguments; returns the log path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "systemctl.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SYSTEMCTL_LOG", str(log))
    monkeypatch.setenv("FAKE_SYSTEMCTL_MODE", "ok")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def exec_start(unit_text: str) -> str:
    return next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))


# -- rendering -----------------------------------------------------------------------------


def test_system_unit_runs_headless_node_for_data_dir() -> None:
    text = systemd.render_unit(
        user=False,
        data_dir=Path("/var/lib/peerstash/main"),
        exe=["/usr/bin/peerstash"],
        env_file=Path("/etc/peerstash/main.env"),
    )
    assert exec_start(text) == (
        "ExecStart=/usr/bin/peerstash --no-gui --data-dir /var/lib/peerstash/main"
    )
    assert "EnvironmentFile=-/etc/peerstash/main.env" in text
    assert "WantedBy=multi-user.target" in text
    assert "After=network-online.target" in text
    # restic gets SIGINT from the node, never systemd's SIGTERM (stale locks on 0.14).
    assert "KillMode=mixed" in text
    assert "LimitNOFILE=65536" in text.splitlines()  # a flood of connections must not starve it
    assert "CacheDirectory=peerstash/main" in text.splitlines()
    assert "StateDirectory=peerstash/main" in text.splitlines()
    assert "ReadWritePaths" not in text  # the StateDirectory is the data dir
    assert "password" not in text.lower().replace("--password-env", "").replace(
        "repository passwords", ""
    )


def test_user_unit_targets_default_target() -> None:
    text = systemd.render_unit(
        user=True, data_dir=Path("/home/a/.local/share/peerstash"), exe=["x"]
    )
    assert "WantedBy=default.target" in text
    assert "network-online" not in text  # a user manager can't order against system targets
    assert "PrivateTmp" not in text
    assert not any(line.startswith("EnvironmentFile=") for line in text.splitlines())


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("/usr/bin/peerstash", "/usr/bin/peerstash"),
        ("/srv/my data", '"/srv/my data"'),
        ("/srv/100%", "/srv/100%%"),
        ("/srv/$HOME", "/srv/$$HOME"),
        ('/srv/a"b', '"/srv/a\\"b"'),
        ("/srv/a\\b", '"/srv/a\\\\b"'),
        ("/srv/a;b", '"/srv/a;b"'),
        ("", '""'),
    ],
)
def test_exec_start_quoting(arg: str, quoted: str) -> None:
    assert systemd.quote_arg(arg) == quoted


def test_unit_names() -> None:
    assert systemd.unit_name(None) == "peerstash.service"
    assert systemd.unit_name("lab") == "peerstash-lab.service"
    for bad in ("a/b", "-x", "a b", ".hidden"):
        with pytest.raises(systemd.ServiceError):
            systemd.unit_name(bad)


def test_packaged_template_unit() -> None:
    text = (ROOT / "resources" / "peerstash@.service").read_text()
    assert exec_start(text) == (
        "ExecStart=/usr/bin/peerstash --no-gui --data-dir /var/lib/peerstash/%i"
    )
    for line in (
        "EnvironmentFile=-/etc/peerstash/%i.env",
        "StateDirectory=peerstash/%i",
        "KillMode=mixed",
        "LimitNOFILE=65536",
        "WantedBy=multi-user.target",
    ):
        assert line in text.splitlines()


# -- install / uninstall / status ----------------------------------------------------------


def test_install_system_writes_unit_and_enables(fake_systemctl: Path, tmp_path: Path) -> None:
    units, envs = tmp_path / "units", tmp_path / "etc-peerstash"
    rep = systemd.install(
        False, Path("/var/lib/peerstash/main"), ["/usr/bin/peerstash"], units=units, envs=envs
    )
    unit = units / "peerstash.service"
    env = envs / "main.env"
    assert rep.systemd and rep.installed and rep.unit_path == unit
    assert mode(unit) == 0o644
    assert mode(env) == 0o600
    assert f"EnvironmentFile=-{env}" in unit.read_text()
    assert calls(fake_systemctl) == [
        ["daemon-reload"],
        ["enable", "--now", "peerstash.service"],
        ["is-enabled", "peerstash.service"],
        ["is-active", "peerstash.service"],
    ]
    assert (rep.enabled, rep.active) == ("enabled", "active")
    assert rep.todo == []


def test_install_user_uses_user_manager_and_xdg_dirs(fake_systemctl: Path, tmp_path: Path) -> None:
    rep = systemd.install(True, tmp_path / "data", ["/opt/peerstash"], name="lab", start=False)
    unit = tmp_path / "config" / "systemd" / "user" / "peerstash-lab.service"
    env = tmp_path / "config" / "peerstash" / "peerstash-lab.env"
    assert rep.unit_path == unit and unit.is_file() and env.is_file()
    assert f"--data-dir {tmp_path / 'data'}" in unit.read_text()
    assert calls(fake_systemctl)[:2] == [
        ["--user", "daemon-reload"],
        ["--user", "enable", "peerstash-lab.service"],
    ]
    assert any("enable-linger" in t for t in rep.todo)


def test_install_keeps_an_existing_env_file(fake_systemctl: Path, tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "main.env").write_text("RESTIC_PASSWORD_NAS=hunter2\n")
    systemd.install(False, tmp_path / "d", ["p"], units=tmp_path / "u", envs=envs)
    assert (envs / "main.env").read_text() == "RESTIC_PASSWORD_NAS=hunter2\n"
    assert "hunter2" not in (tmp_path / "u" / "peerstash.service").read_text()


def test_install_without_systemd_still_writes_unit(
    fake_systemctl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SYSTEMCTL_MODE", "offline")
    rep = systemd.install(False, tmp_path / "d", ["p"], units=tmp_path / "u", envs=tmp_path / "e")
    assert not rep.systemd
    assert (tmp_path / "u" / "peerstash.service").is_file()
    assert rep.todo == ["systemctl daemon-reload", "systemctl enable --now peerstash.service"]
    assert any("not been booted" in m for m in rep.messages)
    assert calls(fake_systemctl) == [["daemon-reload"]]


def test_install_without_systemctl_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rep = systemd.install(False, tmp_path / "d", ["p"], units=tmp_path / "u", envs=tmp_path / "e")
    assert not rep.systemd and rep.installed
    assert any("systemctl: not found" in m for m in rep.messages)
    assert "systemctl enable --now peerstash.service" in rep.todo


def test_install_reports_a_failing_enable(
    fake_systemctl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SYSTEMCTL_MODE", "fail-enable")
    with pytest.raises(systemd.ServiceError, match="Access denied"):
        systemd.install(False, tmp_path / "d", ["p"], units=tmp_path / "u", envs=tmp_path / "e")


def test_uninstall_disables_and_removes_but_keeps_secrets(
    fake_systemctl: Path, tmp_path: Path
) -> None:
    units, envs = tmp_path / "u", tmp_path / "e"
    systemd.install(False, tmp_path / "d", ["p"], units=units, envs=envs)
    fake_systemctl.write_text("")
    rep = systemd.uninstall(False, units=units, envs=envs)
    assert not (units / "peerstash.service").exists()
    assert (envs / "main.env").exists()
    assert calls(fake_systemctl) == [
        ["daemon-reload"],
        ["disable", "--now", "peerstash.service"],
        ["daemon-reload"],
    ]
    assert any("kept" in m for m in rep.messages)
    with pytest.raises(systemd.ServiceError, match="nothing to uninstall"):
        systemd.uninstall(False, units=units, envs=envs)


def test_status(fake_systemctl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    units = tmp_path / "u"
    rep = systemd.status(False, units=units)
    assert not rep.installed and rep.systemd
    systemd.install(False, tmp_path / "d", ["p"], units=units, envs=tmp_path / "e")
    rep = systemd.status(False, units=units)
    assert rep.installed and (rep.enabled, rep.active) == ("enabled", "active")
    monkeypatch.setenv("FAKE_SYSTEMCTL_MODE", "offline")
    rep = systemd.status(False, units=units)
    assert rep.installed and not rep.systemd and rep.enabled is None
    assert any("offline" in m for m in rep.messages)


# -- the CLI: no running node needed ------------------------------------------------------


def test_cli_service_install_status_uninstall(
    fake_systemctl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "node data"  # no node runs here: the command must not need one
    base = ["--data-dir", str(data), "service"]

    def run(*argv: str) -> int:
        return cli.run_command(cli.build_parser().parse_args([*base, *argv]))

    assert run("install", "--user") == 0
    out = capsys.readouterr().out
    unit = tmp_path / "config" / "systemd" / "user" / "peerstash.service"
    assert f"wrote {unit}" in out
    assert f'--no-gui --data-dir "{data}"' in unit.read_text()

    assert run("status", "--user", "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["installed"] and st["scope"] == "user" and st["active"] == "active"

    assert run("uninstall", "--user") == 0
    assert not unit.exists()
    assert run("status", "--user") == cli.EXIT_FAILED  # not installed
    assert ["--user", "disable", "--now", "peerstash.service"] in calls(fake_systemctl)


def test_cli_system_scope_needs_root(
    fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    args = cli.build_parser().parse_args(["service", "install", "--system"])
    assert cli.run_command(args) == cli.EXIT_FAILED
    assert "needs root" in capsys.readouterr().err
    assert calls(fake_systemctl) == []
