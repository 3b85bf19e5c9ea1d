"""The shipped systemd units, checked by systemd's own tools (no running systemd needed).

Both the packaged ``resources/peerstash@.service`` and the unit ``peerstash service install
--system`` writes must pass ``systemd-analyze verify`` without a single warning, rate at most
4.0 in ``systemd-analyze security --offline=true``, and agree on the system layout (data dir,
state and cache directories, environment file).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from peerstash.peer import systemd

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "resources" / "peerstash@.service"
MAX_EXPOSURE = 4.0
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd; scripts/setup --test does)",
)


def installed_unit() -> str:
    return systemd.render_unit(
        user=False,
        data_dir=systemd.system_data_dir("main"),
        exe=["/usr/bin/peerstash"],
        env_file=systemd.SYSTEM_ENV_DIR / systemd.env_file_name(False, "main"),
        name="main",
    )


def units() -> list[tuple[str, str]]:
    return [
        ("peerstash@main.service", PACKAGED.read_text()),
        ("peerstash-main.service", installed_unit()),
    ]


def write_unit(tmp_path: Path, name: str, text: str) -> Path:
    """The unit in a temp dir, its ExecStart binary swapped for one that exists here."""
    exe = tmp_path / "peerstash"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    path = tmp_path / name
    path.write_text(text.replace("/usr/bin/peerstash", str(exe)))
    return path


@needs_analyze
@pytest.mark.parametrize(("name", "text"), units(), ids=["packaged", "service-install"])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, name: str, text: str) -> None:
    path = write_unit(tmp_path, name, text)
    proc = subprocess.run(
        [str(ANALYZE), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys are only warnings (exit 0): any output at all fails the test.
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout + proc.stderr
    )


@needs_analyze
@pytest.mark.parametrize(("name", "text"), units(), ids=["packaged", "service-install"])
def test_unit_exposure_is_at_most_4(tmp_path: Path, name: str, text: str) -> None:
    path = write_unit(tmp_path, name, text)
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip(f"this systemd-analyze has no --offline (systemd >= 250 has): {proc.stderr}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_packaged_unit_carries_the_shared_hardening() -> None:
    lines = PACKAGED.read_text().splitlines()
    for line in (*systemd.SYSTEM_HARDENING, *systemd.SYSTEM_START_LIMIT):
        assert line in lines, line
    # Never loosened on purpose: a setuid file must come back from a restore.
    assert not any(line.startswith("RestrictSUIDSGID=") for line in lines)


def test_packaged_and_installed_units_share_one_layout() -> None:
    """``peerstash@lab`` and ``service install --system --name lab``: same dirs, same env."""
    packaged = PACKAGED.read_text().replace("%i", "lab").splitlines()
    installed = systemd.render_unit(
        user=False,
        data_dir=systemd.default_data_dir(False, "lab"),
        exe=["/usr/bin/peerstash"],
        env_file=systemd.SYSTEM_ENV_DIR / systemd.env_file_name(False, "lab"),
        name="lab",
    ).splitlines()
    for line in (
        "ExecStart=/usr/bin/peerstash --no-gui --data-dir /var/lib/peerstash/lab",
        "EnvironmentFile=-/etc/peerstash/lab.env",
        "StateDirectory=peerstash/lab",
        "StateDirectoryMode=0700",
        "CacheDirectory=peerstash/lab",
        "CacheDirectoryMode=0700",
    ):
        assert line in packaged, line
        assert line in installed, line
    # Neither points restic's cache anywhere but $CACHE_DIRECTORY.
    assert not any("XDG_CACHE_HOME" in line for line in packaged + installed)
    assert systemd.default_data_dir(False) == Path("/var/lib/peerstash/main")


def test_installed_unit_elsewhere_may_write_its_data_dir(tmp_path: Path) -> None:
    text = systemd.render_unit(
        user=False, data_dir=tmp_path / "node", exe=["/usr/bin/peerstash"], name=None
    )
    assert f"ReadWritePaths={tmp_path / 'node'}" in text.splitlines()
    assert "ProtectSystem=strict" in text.splitlines()
