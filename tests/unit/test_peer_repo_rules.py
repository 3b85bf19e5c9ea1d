"""What a peer may set on one of our repositories (peer/services/remote_config.py), rule by rule."""

from __future__ import annotations

import os

import pytest

from peerstash.peer.links import protocol as proto
from peerstash.peer.links.rpc import CallError
from peerstash.peer.services.remote_config import check_peer_env, check_peer_uri, peer_password


@pytest.mark.parametrize(
    "uri",
    [
        "/srv/backup/r1",
        "local:/srv/backup/r1",
        "sftp:backup@nas:/srv/r1",
        "sftp://backup@nas:2222//srv/r1",
        "rest:https://user:pass@host:8000/r1",
        "s3:s3.amazonaws.com/bucket/r1",
        "b2:bucket:r1",
        "azure:container:/r1",
        "gs:bucket:/r1",
        "swift:container:/r1",
    ],
)
def test_uris_a_peer_may_set(uri: str) -> None:
    check_peer_uri(uri)


def test_a_local_path_is_absolute_as_this_machine_reads_it() -> None:
    if os.name == "nt":
        check_peer_uri("C:\\backup\\r1")
    else:
        with pytest.raises(CallError, match="must be absolute"):
            check_peer_uri("C:\\backup\\r1")


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("rclone:remote:bucket", "restic runs the rclone program"),
        ("relative/dir", "must be absolute"),
        ("local:relative", "must be absolute"),
        ("SFTP:host:/p", "may not use the SFTP: backend"),
        ("ftp:host/p", "may not use the ftp: backend"),
        ("sftp:-oProxyCommand=sh:/p", "would pass options to ssh"),
        ("sftp:-luser@host:/p", "would pass options to ssh"),
        ("sftp://host -oX=y//p", "holds spaces"),
        ("", "not a usable"),
        (" /srv/x", "not a usable"),
        ("/srv/x\n", "not a usable"),
    ],
)
def test_uris_a_peer_may_not_set(uri: str, words: str) -> None:
    with pytest.raises(CallError) as exc:
        check_peer_uri(uri)
    assert exc.value.code == "forbidden" and words in exc.value.message


def test_a_refused_uri_never_shows_its_credentials() -> None:
    with pytest.raises(CallError) as exc:
        check_peer_uri("ftp://user:hunter2-secret@host/p")
    assert "hunter2-secret" not in exc.value.message


def test_env_names_a_peer_may_set() -> None:
    check_peer_env({"AWS_ACCESS_KEY_ID": "k", "B2_ACCOUNT_KEY": "v", "AZURE_ACCOUNT_NAME": "n"})


@pytest.mark.parametrize(
    "name",
    [
        "RESTIC_PASSWORD_COMMAND",
        "restic_password_file",
        "RESTIC_REPOSITORY",
        "LD_PRELOAD",
        "DYLD_INSERT_LIBRARIES",
        "PATH",
        "HOME",
        "SSH_ASKPASS",
        "RCLONE_CONFIG",
        "AWS_SHARED_CREDENTIALS_FILE",
        "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "HTTPS_PROXY",
        "SSL_CERT_DIR",
        "OPENSSL_CONF",
        "GLIBC_TUNABLES",
        "LOCPATH",
        "HOSTALIASES",
        "KRB5_CONFIG",
        "BAD-NAME",
        "1ABC",
        "A=B",
        "",
    ],
)
def test_env_names_a_peer_may_not_set(name: str) -> None:
    with pytest.raises(CallError) as exc:
        check_peer_env({name: "value-never-said"})
    assert exc.value.code == "forbidden"
    assert "value-never-said" not in exc.value.message


@pytest.mark.parametrize(
    "given",
    [
        {"source": "command", "ref": "cat /pw"},
        {"source": "file", "ref": "/pw"},
        {"source": "env", "ref": "PW"},
        {"source": "secret", "ref": "/pw", "value": "x"},
    ],
)
def test_a_password_from_a_peer_is_only_ever_a_value(given: dict[str, str]) -> None:
    with pytest.raises(CallError) as exc:
        peer_password(given)
    assert "only as a value" in exc.value.message


def test_a_password_value_is_taken_and_not_shown() -> None:
    spec = peer_password({"source": "secret", "value": "s3cret-value"})
    assert spec.source == "secret" and spec.value == "s3cret-value"
    assert "s3cret-value" not in repr(spec)


def test_a_call_never_shows_its_argument_values() -> None:
    call = proto.Call(id="c1", method="config.repo.add", args={"password": {"value": "pw-9"}})
    assert "pw-9" not in repr(call) and "pw-9" not in str(call)
    assert "password" in repr(call)
