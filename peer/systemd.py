"""``peerstash service``: a systemd unit that runs ``peerstash --no-gui`` for one data directory.

Pure and synchronous on purpose: the CLI calls it without a running node, and tests drive it
against a temporary unit directory with a fake ``systemctl`` on ``PATH``. systemd is optional:
where there is no ``systemctl`` or no running manager (containers, WSL, chroots), the unit file
is still written and the report says how to enable it by hand.

Unit files are 0644 and never hold secrets. A repository added with ``--password-env VAR``
(or a backend that needs credentials in the environment) gets its variables from the
``EnvironmentFile=`` next to the unit: a 0600 file the person fills in, which ``install``
creates once with comments only and ``uninstall`` leaves in place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_DIR = Path("/etc/peerstash")
#: Parent of every system node's data directory: ``/var/lib/peerstash/<instance>``, the
#: ``StateDirectory=peerstash/<instance>`` of both the packaged ``peerstash@.service`` and the
#: unit ``install`` writes, so ``sudo peerstash --system NAME status`` finds either.
SYSTEM_DATA_DIR = Path("/var/lib/peerstash")
#: The instance of a system service installed without ``--name`` (``peerstash@main``'s too).
DEFAULT_INSTANCE = "main"
SYSTEMCTL_TIMEOUT = 60.0

#: Start-rate limit of a system unit (``[Unit]``): a node that crashes on start stops being
#: restarted after 5 tries in 10 minutes instead of looping forever.
SYSTEM_START_LIMIT = ("StartLimitIntervalSec=600", "StartLimitBurst=5")

#: The sandbox of a system node, shared verbatim with resources/peerstash@.service (a test
#: checks both carry it). The node runs as root because it must read every file it backs up
#: and restore owners and modes; everything else is taken away:
#: ``systemd-analyze security`` rates it below 4.0 (docs/install.md, "Hardening"). Left out on
#: purpose: ``RestrictSUIDSGID`` (a restore must bring setuid files back),
#: ``MemoryDenyWriteExecute`` (untested with cffi/ctypes callbacks), ``PrivateNetwork``/
#: ``IPAddressDeny`` (it talks to peers and repositories), ``PrivateUsers`` (needs real root).
SYSTEM_HARDENING = (
    # Read anything; on restore, write anywhere allowed below and set owners, modes, xattrs.
    "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE CAP_CHOWN CAP_FOWNER "
    "CAP_FSETID CAP_SETFCAP",
    # The whole file system is read-only but for StateDirectory, CacheDirectory and
    # ReadWritePaths: restoring elsewhere needs a drop-in (docs/install.md).
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateMounts=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "KeyringMode=private",
)

ENV_FILE_TEMPLATE = """\
# Environment for {unit} (read by systemd through EnvironmentFile=; keep this file 0600).
# Repositories added with `--password-env NAME` read NAME from here, e.g.
#   RESTIC_PASSWORD_NAS=correct horse battery staple
# Backend credentials go here too, e.g.
#   AWS_ACCESS_KEY_ID=...
#   AWS_SECRET_ACCESS_KEY=...
# Apply changes with: {restart}
"""


class ServiceError(Exception):
    pass


def unit_name(name: str | None = None) -> str:
    """``peerstash.service``, or ``peerstash-NAME.service`` for a second node on one machine."""
    if not name:
        return "peerstash.service"
    if not all(c.isalnum() or c in "-_." for c in name) or name.startswith(("-", ".")):
        raise ServiceError(f"service name {name!r}: use letters, digits, '-', '_' and '.'")
    return f"peerstash-{name}.service"


def _config_home() -> Path:
    raw = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(raw) if raw and os.path.isabs(raw) else Path.home() / ".config"


def unit_dir(user: bool) -> Path:
    """``~/.config/systemd/user`` for a user unit, ``/etc/systemd/system`` for a system one."""
    return _config_home() / "systemd" / "user" if user else SYSTEM_UNIT_DIR


def env_dir(user: bool) -> Path:
    return _config_home() / "peerstash" if user else SYSTEM_ENV_DIR


def instance_name(name: str | None = None) -> str:
    """A system node's instance: ``--name``, else ``main`` (validated like a unit name)."""
    unit_name(name)
    return name or DEFAULT_INSTANCE


def system_data_dir(name: str | None = None) -> Path:
    """``/var/lib/peerstash/<instance>``: where a system node lives (packaged unit or not)."""
    return SYSTEM_DATA_DIR / instance_name(name)


def env_file_name(user: bool, name: str | None = None) -> str:
    """``<instance>.env`` for a system unit (as ``peerstash@<instance>`` reads), else
    ``peerstash[-NAME].env``."""
    if user:
        return f"{unit_name(name).removesuffix('.service')}.env"
    return f"{instance_name(name)}.env"


def default_data_dir(user: bool, name: str | None = None) -> Path:
    if user:
        from peerstash.peer.paths import resolve_data_dir

        return resolve_data_dir(None)
    return system_data_dir(name)


def default_command() -> list[str]:
    """The command that starts this Peerstash: the installed script if there is one."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "peerstash" and argv0.is_file():
        return [str(argv0.absolute())]
    script = shutil.which("peerstash")
    if script:
        return [str(Path(script).absolute())]
    return [sys.executable, "-m", "peerstash.desktop"]


def quote_arg(arg: str) -> str:
    """Quote one word of an ``ExecStart=`` line (systemd.service(5), "Command lines")."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\n\"'\\;"):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _specifier_safe(path: Path) -> str:
    """A path for a unit setting that is not a command line: only ``%`` needs escaping."""
    return str(path).replace("%", "%%")


def render_unit(
    *,
    user: bool,
    data_dir: Path,
    exe: Sequence[str],
    env_file: Path | None = None,
    name: str | None = None,
) -> str:
    """The text of the unit that runs ``exe --no-gui --data-dir DATA_DIR``."""
    command = [*exe, "--no-gui", "--data-dir", str(data_dir)]
    lines = [
        "# Written by `peerstash service install`; `peerstash service uninstall` removes it.",
        "# No secrets here: repository passwords given with --password-env and backend",
        "# credentials belong in the EnvironmentFile (mode 0600).",
        "[Unit]",
        f"Description=Peerstash backup node ({_specifier_safe(data_dir)})",
    ]
    if not user:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    if not user:
        lines += list(SYSTEM_START_LIMIT)
    lines += [
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(quote_arg(a) for a in command),
    ]
    if env_file is not None:
        # The leading '-': a missing file is not an error.
        lines.append(f"EnvironmentFile=-{_specifier_safe(env_file)}")
    lines += [
        "Environment=PYTHONUNBUFFERED=1",
        # SIGTERM reaches the node only; it stops restic with SIGINT itself, because a
        # SIGTERMed restic leaves its lock behind. Whatever is left gets SIGKILL at the end.
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=90",
        "Restart=on-failure",
        "RestartSec=10",
        "UMask=0077",
        "NoNewPrivileges=yes",
        # Peer connections and restic's files need descriptors; the node raises its soft
        # limit to this hard one at start.
        "LimitNOFILE=65536",
    ]
    if not user:
        # The packaged peerstash@.service's layout: systemd creates /var/lib/peerstash/<inst>
        # and /var/cache/peerstash/<inst> (0700); the node passes $CACHE_DIRECTORY to restic.
        instance = instance_name(name)
        lines += [
            f"StateDirectory=peerstash/{instance}",
            "StateDirectoryMode=0700",
            f"CacheDirectory=peerstash/{instance}",
            "CacheDirectoryMode=0700",
        ]
        if data_dir != system_data_dir(name):
            # Anywhere else is read-only under ProtectSystem=strict; install creates it.
            lines.append(f"ReadWritePaths={_specifier_safe(data_dir)}")
        lines += list(SYSTEM_HARDENING)
    lines += [
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Report:
    """What a service command did, in words a person can act on."""

    unit: str
    unit_path: Path
    user: bool
    systemd: bool = False
    messages: list[str] = field(default_factory=list)
    #: Commands the person still has to run (systemd was not reachable).
    todo: list[str] = field(default_factory=list)
    enabled: str | None = None
    active: str | None = None
    installed: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "unit_path": str(self.unit_path),
            "scope": "user" if self.user else "system",
            "systemd": self.systemd,
            "installed": self.installed,
            "enabled": self.enabled,
            "active": self.active,
            "messages": list(self.messages),
            "todo": list(self.todo),
        }


def _systemctl_cmd(user: bool, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if user else []), *args]


def _run(cmd: list[str]) -> tuple[int, str]:
    """Run systemctl; (returncode, combined output). 127 when it is not installed."""
    exe = shutil.which(cmd[0])
    if exe is None:
        return 127, f"{cmd[0]}: not found"
    try:
        proc = subprocess.run(
            [exe, *cmd[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


#: What ``systemctl is-system-running`` prints when a manager is there (it exits non-zero for
#: some of them, e.g. "degraded"); a container without systemd prints "offline".
MANAGER_STATES = ("initializing", "starting", "running", "degraded", "maintenance", "stopping")


def manager_running(user: bool) -> tuple[bool, str]:
    """Is there a (user or system) manager to talk to? Read-only. (yes/no, why not)."""
    code, out = _run(_systemctl_cmd(user, "is-system-running"))
    words = out.split()
    if code not in (126, 127) and words and words[0] in MANAGER_STATES:
        return True, ""
    if code in (126, 127):
        return False, out
    return False, f"`{' '.join(_systemctl_cmd(user, 'is-system-running'))}` says {out or code!r}"


def systemd_available(user: bool) -> tuple[bool, str]:
    """Can we talk to the (user or system) manager? Reloads its units. (yes/no, why not)."""
    code, out = _run(_systemctl_cmd(user, "daemon-reload"))
    if code == 0:
        return True, ""
    first = out.splitlines()[0] if out else f"exit code {code}"
    return False, first


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(
    user: bool,
    data_dir: Path,
    exe: Sequence[str],
    *,
    name: str | None = None,
    units: Path | None = None,
    envs: Path | None = None,
    start: bool = True,
) -> Report:
    """Write the unit (0644) and its env file (0600, once), then enable and start it."""
    unit = unit_name(name)
    path = (units or unit_dir(user)) / unit
    env_file = (envs or env_dir(user)) / env_file_name(user, name)
    report = Report(unit=unit, unit_path=path, user=user)
    if not user and data_dir != system_data_dir(name):
        # ReadWritePaths= needs it to exist; systemd creates only the StateDirectory.
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existed = path.exists()
    _write_atomic(
        path,
        render_unit(user=user, data_dir=data_dir, exe=exe, env_file=env_file, name=name),
        0o644,
    )
    report.installed = True
    report.messages.append(f"{'updated' if existed else 'wrote'} {path}")
    if not env_file.exists():
        restart = " ".join(_systemctl_cmd(user, "restart", unit))
        env_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(env_file, ENV_FILE_TEMPLATE.format(unit=unit, restart=restart), 0o600)
        report.messages.append(f"wrote {env_file} (0600) for passwords from --password-env")

    enable = _systemctl_cmd(user, "enable", *(["--now"] if start else []), unit)
    ok, why = systemd_available(user)
    report.systemd = ok
    if not ok:
        report.messages.append(f"systemd is not reachable ({why}); the unit is not enabled")
        report.todo.append(" ".join(_systemctl_cmd(user, "daemon-reload")))
        report.todo.append(" ".join(enable))
        if user:
            report.todo.append("loginctl enable-linger $USER  # keep it running after logout")
        return report
    code, out = _run(enable)
    if code != 0:
        raise ServiceError(f"`{' '.join(enable)}` failed: {out or f'exit code {code}'}")
    report.messages.append(f"enabled{' and started' if start else ''} {unit}")
    if user:
        report.todo.append("loginctl enable-linger $USER  # keep it running after logout")
    _fill_state(report)
    return report


def uninstall(
    user: bool, *, name: str | None = None, units: Path | None = None, envs: Path | None = None
) -> Report:
    """Stop and disable the unit, remove its file; the env file (your secrets) stays."""
    unit = unit_name(name)
    path = (units or unit_dir(user)) / unit
    env_file = (envs or env_dir(user)) / env_file_name(user, name)
    report = Report(unit=unit, unit_path=path, user=user)
    if not path.exists():
        raise ServiceError(f"{path} does not exist: nothing to uninstall")
    ok, why = systemd_available(user)
    report.systemd = ok
    if ok:
        code, out = _run(_systemctl_cmd(user, "disable", "--now", unit))
        if code != 0:
            raise ServiceError(f"disabling {unit} failed: {out or f'exit code {code}'}")
        report.messages.append(f"stopped and disabled {unit}")
    path.unlink()
    report.messages.append(f"removed {path}")
    if ok:
        _run(_systemctl_cmd(user, "daemon-reload"))
    else:
        report.messages.append(f"systemd is not reachable ({why})")
    if env_file.exists():
        report.messages.append(f"kept {env_file} (it may hold passwords; delete it yourself)")
    return report


def status(user: bool, *, name: str | None = None, units: Path | None = None) -> Report:
    """Is the unit file there, and what does systemd say about it?"""
    unit = unit_name(name)
    path = (units or unit_dir(user)) / unit
    report = Report(unit=unit, unit_path=path, user=user, installed=path.exists())
    report.messages.append(f"{path}: {'present' if report.installed else 'not installed'}")
    report.systemd, why = manager_running(user)
    if report.systemd:
        _fill_state(report)
    else:
        report.messages.append(f"systemd is not reachable ({why})")
    return report


def _fill_state(report: Report) -> None:
    for attr, verb in (("enabled", "is-enabled"), ("active", "is-active")):
        _, out = _run(_systemctl_cmd(report.user, verb, report.unit))
        setattr(report, attr, out.splitlines()[0].strip() if out else "unknown")
