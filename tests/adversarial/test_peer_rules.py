"""Every rule of core/peer_rules.py, one by one: what a peer may place here and what not."""

from __future__ import annotations

import pytest

from peerstash.core.peer_rules import (
    PEER_ENV_ALLOWED,
    PeerRuleError,
    check_no_options,
    check_peer_env,
    check_peer_password_source,
    check_peer_repo,
    check_peer_uri,
    peer_may_set,
)
from tests.fixtures.sharing import REFUSED_ENV


@pytest.mark.parametrize(
    "uri",
    [
        "/srv/backup/r1",
        "/mnt/My Backups/r1",
        "local:/srv/backup/r1",
        "sftp:backup@nas:/srv/r1",
        "sftp:nas:relative/r1",
        "sftp://backup@nas:2222//srv/r1",
        "sftp://[::1]//srv/r1",
        "rest:https://host:8000/",
        "rest:http://user:p%40ss@127.0.0.1:8000/r1",
        "s3:s3.amazonaws.com/bucket/r1",
        "s3:http://localhost:9000/restic",
        "s3:https://key:secret@minio.lan:9000/bucket",
        "b2:bucket",
        "b2:bucket:path/to/repo",
        "azure:container:/r1",
        "gs:bucket:/",
        "swift:container:/path",
    ],
)
def test_uri_forms_a_peer_may_send(uri: str) -> None:
    check_peer_uri(uri)


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("rclone:remote:bucket", "restic runs the rclone program"),
        ("ftp://host/p", "may not use the ftp: backend"),
        ("SFTP:host:/p", "may not use the SFTP: backend"),
        ("opendal:x", "may not use the opendal: backend"),
        ("relative/dir", "must be absolute"),
        ("local:relative", "must be absolute"),
        ("sftp:-oProxyCommand=sh:/p", "would pass options to ssh"),
        ("sftp:-luser@host:/p", "would pass options to ssh"),
        ("sftp:user@-host:/p", "would pass options to ssh"),
        ("sftp://-oX@host//p", "would pass options to ssh"),
        ("sftp://host -oX=y//p", "holds spaces"),
        ("sftp:host\t:/p", "not a usable"),
        ("sftp:host", "is not of the form sftp:"),
        ("sftp:user@host:", "is not of the form sftp:"),
        ("sftp:us er@host:/p", "holds spaces"),
        ("sftp:user;id@host:/p", "is not of the form sftp:"),
        ("rest:ftp://host/", "is not of the form rest:"),
        ("rest:https://-host/", "is not of the form rest:"),
        ("rest:host:8000/", "is not of the form rest:"),
        ("s3:/bucket", "is not of the form s3:"),
        ("s3:https://host", "is not of the form s3:"),
        ("b2:", "is not of the form b2:"),
        ("b2:-bucket", "is not of the form b2:"),
        ("azure:container", "is not of the form azure:"),
        ("gs:", "is not of the form gs:"),
        ("swift:/x", "is not of the form swift:"),
        ("", "not a usable"),
        (" /srv/x", "not a usable"),
        ("/srv/x\n", "not a usable"),
        ("/srv/\x1b[2Jx", "not a usable"),
        ("/srv/x\x00y", "not a usable"),
    ],
)
def test_uri_forms_a_peer_may_not_send(uri: str, words: str) -> None:
    with pytest.raises(PeerRuleError) as exc:
        check_peer_uri(uri)
    assert words in exc.value.message


def test_a_refused_uri_never_shows_its_password() -> None:
    with pytest.raises(PeerRuleError) as exc:
        check_peer_uri("rest:ftp://user:hunter2-secret@host/p")
    assert "hunter2-secret" not in str(exc.value) and "***" in str(exc.value)


@pytest.mark.parametrize("name", sorted(PEER_ENV_ALLOWED))
def test_backend_credentials_a_peer_may_set(name: str) -> None:
    check_peer_env({name: "value"})
    assert peer_may_set(name)


@pytest.mark.parametrize(
    "name",
    [
        *REFUSED_ENV,
        "RESTIC_PASSWORD_FILE",
        "RESTIC_REPOSITORY",
        "restic_password_command",
        "aws_access_key_id",  # restic reads the exact name; anything else is not a credential
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_PROFILE",
        "AWS_CA_BUNDLE",
        "AZURE_FORCE_CLI_CREDENTIAL",
        "HTTP_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSH_AUTH_SOCK",
        "SSH_ASKPASS",
        "RCLONE_CONFIG",
        "DYLD_INSERT_LIBRARIES",
        "HOME",
        "TMPDIR",
        "GODEBUG",
        "OS_CACERT",
        "OS_CLOUD",
        "NOT_A_BACKEND_VAR",
    ],
)
def test_everything_else_is_refused(name: str) -> None:
    with pytest.raises(PeerRuleError) as exc:
        check_peer_env({name: "value-never-said"})
    assert f"a peer may not set {name}: " in exc.value.message
    assert "value-never-said" not in exc.value.message
    assert not peer_may_set(name)


@pytest.mark.parametrize("name", ["BAD-NAME", "1ABC", "A=B", "", "X" * 101])
def test_names_that_are_not_variable_names(name: str) -> None:
    with pytest.raises(PeerRuleError, match="does not look like a variable name"):
        check_peer_env({name: "v"})


def test_a_nul_in_a_value_is_refused() -> None:
    with pytest.raises(PeerRuleError, match="holds a NUL"):
        check_peer_env({"AWS_ACCESS_KEY_ID": "a\x00b"})


@pytest.mark.parametrize("options", [["sftp.command=sh"], ["s3.storage-class=STANDARD"], ("x=y",)])
def test_no_options_at_all(options: list[str]) -> None:
    with pytest.raises(PeerRuleError, match="may not set restic -o options"):
        check_no_options(options)
    check_no_options([])
    check_no_options(())


@pytest.mark.parametrize(
    ("source", "ref"),
    [("command", "cat /pw"), ("file", "/pw"), ("env", "PW"), ("secret", "/pw"), ("", "")],
)
def test_a_password_only_as_a_value(source: str, ref: str) -> None:
    with pytest.raises(PeerRuleError, match="only as a value"):
        check_peer_password_source(source, ref)
    check_peer_password_source("secret", "")


def test_the_whole_repository_is_checked() -> None:
    check_peer_repo(uri="s3:host/bucket", env={"AWS_ACCESS_KEY_ID": "k"}, options=())
    with pytest.raises(PeerRuleError, match="-o options"):
        check_peer_repo(uri="/srv/r", env={}, options=["sftp.command=sh"])
    with pytest.raises(PeerRuleError, match="LD_PRELOAD"):
        check_peer_repo(uri="/srv/r", env={"LD_PRELOAD": "/x.so"})
    with pytest.raises(PeerRuleError, match="rclone"):
        check_peer_repo(uri="rclone:x:y", env={})
    with pytest.raises(PeerRuleError, match="only as a value"):
        check_peer_repo(uri="/srv/r", env={}, password_source="command", password_ref="sh")
