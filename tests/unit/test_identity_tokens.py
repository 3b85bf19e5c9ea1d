"""Identity key files, key ids, pairing tokens and the failed-attempt rate limiter."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from peerstash.peer.trust import tokens
from peerstash.peer.trust.identity import Identity, IdentityError, key_id, normalize_key_id
from peerstash.peer.trust.tokens import (
    PairingToken,
    RateLimiter,
    TokenFormatError,
    hash_secret,
    parse_token,
    token_id,
    verify_secret,
)

KEY_ID_RE = re.compile(r"^[a-z2-7]{4}(-[a-z2-7]{4}){4}$")


# -- identity -----------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_load_or_create_makes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "identity.key"
    ident = Identity.load_or_create(path)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    again = Identity.load_or_create(path)
    assert again.public_key == ident.public_key
    # No temporary files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.key"]


def test_key_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Identity.load_or_create(tmp_path / "id.key")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "id.key") == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o620])
def test_refuses_a_key_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id.key"
    Identity.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match="group or others"):
        Identity.load_or_create(path)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


def test_refuses_a_symlinked_key_file(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    Identity.load_or_create(real)
    link = tmp_path / "id.key"
    link.symlink_to(real)
    with pytest.raises(IdentityError):
        Identity.load(link)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello\n",
        b"PEERSTASH-ED25519-SEED-V1\nnot-base64!\n",
        b"PEERSTASH-ED25519-SEED-V1\n" + base64.b64encode(b"short") + b"\n",
        b"\xff\xfe" * 10,
        b"x" * 10_000,
    ],
)
def test_refuses_a_corrupt_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "id.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(IdentityError):
        Identity.load_or_create(path)


def test_concurrent_creation_yields_one_identity(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    barrier = threading.Barrier(8)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(Identity.load_or_create(path).public_key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert Identity.load(path).public_key == results[0]


def test_key_id_is_stable_and_documented() -> None:
    ident = Identity.from_seed(bytes(range(32)))
    # A fixed vector: changing the recipe would orphan every token and pinned peer.
    assert ident.key_id == "ywzt-cdu7-wdev-cogm-py66"
    assert key_id(bytes(32)) == "ih4d-7osr-d4qa-tqnm-2uvg"
    # The recipe in the docstring, recomputed independently.
    digest = hashlib.blake2b(ident.public_key, digest_size=20, person=b"peerstash/keyid").digest()
    text = base64.b32encode(digest).decode().lower()[:20]
    assert ident.key_id == "-".join(text[i : i + 4] for i in range(0, 20, 4))


def test_key_id_shape_and_uniqueness() -> None:
    ids = {Identity.generate().key_id for _ in range(200)}
    assert len(ids) == 200
    assert all(KEY_ID_RE.match(i) for i in ids)
    with pytest.raises(ValueError):
        key_id(b"short")


def test_normalize_key_id_accepts_what_people_type() -> None:
    kid = Identity.generate().key_id
    assert normalize_key_id(kid.upper()) == kid
    assert normalize_key_id(kid.replace("-", "")) == kid
    assert normalize_key_id(" " + kid.replace("-", " ") + " ") == kid
    for bad in ["", "abcd", kid + "a", kid.replace(kid[0], "1"), kid[:-1] + "!"]:
        with pytest.raises(ValueError):
            normalize_key_id(bad)


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"data")
    assert len(sig) == 64
    assert Identity.verify(ident.public_key, b"data", sig)
    assert not Identity.verify(ident.public_key, b"datA", sig)
    assert not Identity.verify(Identity.generate().public_key, b"data", sig)
    assert not Identity.verify(ident.public_key, b"data", sig[:-1])
    assert not Identity.verify(ident.public_key[:-1], b"data", sig)
    assert not Identity.verify(bytes(32), b"data", bytes(64))
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not Identity.verify(ident.public_key, b"data", flipped)


def test_identity_repr_hides_the_private_key() -> None:
    ident = Identity.from_seed(bytes(range(32)))
    assert repr(ident) == "Identity(key_id='ywzt-cdu7-wdev-cogm-py66')"


# -- tokens -------------------------------------------------------------------------------


def test_token_round_trip() -> None:
    kid = Identity.generate().key_id
    tok = PairingToken.generate(kid, "nas.local")
    assert len(tok.secret) == 32
    text = str(tok)
    assert text == tok.text
    assert re.fullmatch(r"[a-z2-7-]{24}:[A-Za-z0-9_-]{43}#nas\.local", text)
    parsed = parse_token(text)
    assert (parsed.key_id, parsed.secret, parsed.instance_id) == (kid, tok.secret, "nas.local")
    # What people do to tokens: surrounding whitespace, upper-case key id, no dashes.
    key_part, rest = text.split(":", 1)
    assert parse_token(f"  {key_part.upper().replace('-', '')}:{rest}\n") == parsed


def test_tokens_are_unique() -> None:
    kid = Identity.generate().key_id
    assert len({PairingToken.generate(kid, "a").secret for _ in range(100)}) == 100


def test_token_repr_hides_the_secret() -> None:
    tok = PairingToken.generate(Identity.generate().key_id, "a")
    secret_text = tok.text.split(":")[1].split("#")[0]
    assert secret_text not in repr(tok)
    assert secret_text not in repr(parse_token(tok.text))
    assert "secret" not in repr(tok)


def test_instance_id_may_contain_hash_and_colon() -> None:
    tok = PairingToken.generate(Identity.generate().key_id, "host:8080#2")
    assert parse_token(tok.text).instance_id == "host:8080#2"


VALID = PairingToken.generate(Identity.from_seed(bytes(32)).key_id, "nas")
KID, REST = VALID.text.split(":", 1)
SECRET, _ = REST.split("#", 1)


def _swap_last(secret: str) -> str:
    # 'A' and 'B' differ only in the two unused low bits of the last base64 character.
    last = secret[-1]
    idx = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(last)
    alt = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx ^ 1]
    return secret[:-1] + alt


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (f"{KID}:{SECRET}", "'#' is missing"),
        (f"{KID}{SECRET}#nas", "':' is missing"),
        (f"zzzz:{SECRET}#nas", "bad key id"),
        (f"{KID}0:{SECRET}#nas", "bad key id"),
        (f"{KID}:{SECRET[:-1]}#nas", "43 characters"),
        (f"{KID}:{SECRET}A#nas", "43 characters"),
        (f"{KID}:{SECRET[:-1]}=#nas", "not URL-safe"),
        (f"{KID}:{SECRET[:-1]}+#nas", "not URL-safe"),
        (f"{KID}:{_swap_last(SECRET)}#nas", "canonical"),
        (f"{KID}:{SECRET}#", "empty"),
        (f"{KID}:{SECRET}#my nas", "whitespace"),
        (f"{KID}:{SECRET}#nas\x00", "control"),
        (f"{KID}:{SECRET}#" + "n" * 101, "longer than 100"),
    ],
)
def test_malformed_tokens(text: str, message: str) -> None:
    with pytest.raises(TokenFormatError, match=message):
        parse_token(text)


def test_generate_validates_its_inputs() -> None:
    with pytest.raises(TokenFormatError):
        PairingToken.generate("nope", "nas")
    with pytest.raises(TokenFormatError):
        PairingToken.generate(KID, "")


def test_hash_and_verify_secret() -> None:
    tok = PairingToken.generate(KID, "nas")
    stored = tok.secret_hash
    assert stored.startswith("blake2b-256:") and len(stored) == len("blake2b-256:") + 64
    assert tok.secret.hex() not in stored
    assert hash_secret(tok.secret) == stored  # deterministic
    assert verify_secret(tok.secret, stored)
    other = PairingToken.generate(KID, "nas")
    assert not verify_secret(other.secret, stored)
    assert not verify_secret(tok.secret[:-1], stored)
    assert not verify_secret(b"", stored)
    assert not verify_secret(tok.secret, "")
    assert not verify_secret(tok.secret, stored.upper())
    assert not verify_secret(tok.secret, "sha256:" + stored.split(":")[1])
    assert not verify_secret(tok.secret, stored + "é")  # non-ASCII must not raise
    with pytest.raises(ValueError):
        hash_secret(b"short")


def test_verify_secret_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison must go through hmac.compare_digest, not ==."""
    calls: list[tuple[bytes, bytes]] = []
    real = tokens.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    tok = PairingToken.generate(KID, "nas")
    assert verify_secret(tok.secret, tok.secret_hash)
    assert not verify_secret(bytes(32), tok.secret_hash)
    assert len(calls) == 2


def test_token_id() -> None:
    tok = PairingToken.generate(KID, "nas")
    tid = tok.token_id
    assert re.fullmatch(r"[0-9a-f]{12}", tid)
    assert tid == token_id(tok.secret_hash)
    assert tok.secret_hash.split(":")[1].startswith(tid)
    assert tid not in tok.text
    with pytest.raises(ValueError):
        token_id("sha256:abc")


# -- rate limiter -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_flood_from_one_address_is_refused_and_others_are_not() -> None:
    clock = FakeClock()
    rl = RateLimiter(max_failures=5, window=60, clock=clock)
    for _ in range(4):
        assert rl.allowed("192.0.2.1")
        rl.record_failure("192.0.2.1")
        clock.now += 1
    assert rl.allowed("192.0.2.1")
    rl.record_failure("192.0.2.1")  # the fifth failure within the window
    assert not rl.allowed("192.0.2.1")
    assert rl.retry_after("192.0.2.1") == pytest.approx(60)
    assert rl.allowed("192.0.2.2")  # another address is unaffected
    assert rl.retry_after("192.0.2.2") == 0
    clock.now += 59
    assert not rl.allowed("192.0.2.1")
    clock.now += 1.5
    assert rl.allowed("192.0.2.1")  # the window passed
    # And the count starts afresh: one more failure does not lock it out again.
    rl.record_failure("192.0.2.1")
    assert rl.allowed("192.0.2.1")


def test_failures_spread_beyond_the_window_do_not_lock_out() -> None:
    clock = FakeClock()
    rl = RateLimiter(max_failures=3, window=10, clock=clock)
    for _ in range(20):
        rl.record_failure("a")
        clock.now += 6  # never three within ten seconds
        assert rl.allowed("a")


def test_memory_is_bounded_under_a_flood_from_many_addresses() -> None:
    clock = FakeClock()
    rl = RateLimiter(max_failures=3, window=60, max_entries=1000, clock=clock)
    for i in range(50_000):
        rl.record_failure(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
        assert len(rl) <= 1000
    assert len(rl) == 1000
    # Expired entries go away by themselves.
    clock.now += 61
    rl.record_failure("203.0.113.9")
    assert len(rl) == 1


def test_ipv6_is_grouped_by_prefix_and_mapped_ipv4_is_ipv4() -> None:
    clock = FakeClock()
    rl = RateLimiter(max_failures=2, window=60, clock=clock)
    rl.record_failure("2001:db8::1")
    rl.record_failure("2001:db8::2")  # same /64: same source
    assert not rl.allowed("2001:db8::ffff")
    assert rl.allowed("2001:db8:0:1::1")  # another /64
    rl.record_failure("::ffff:192.0.2.7")
    rl.record_failure("192.0.2.7")
    assert not rl.allowed("192.0.2.7")
    assert rl.source_key("fe80::1%eth0") == "fe80::/64"
    assert rl.source_key("unix-socket") == "unix-socket"


def test_rate_limiter_rejects_nonsense_settings() -> None:
    for kwargs in ({"max_failures": 0}, {"window": 0}, {"max_entries": 0}, {"ipv6_prefix": 129}):
        with pytest.raises(ValueError):
            RateLimiter(**kwargs)
