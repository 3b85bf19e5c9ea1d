#!/bin/sh
# Record how restic 0.14 (Debian 12) and 0.18 (Debian 13) report a storage that refuses our
# credentials or keeps failing, into ./0.14 and ./0.18 (NAME.stdout, NAME.stderr, NAME.rc).
# Needs the project's .venv (aiohttp) and .venv/restic-0.18/restic (scripts/setup --test).
# The URIs carry a password that restic masks itself ("***"); the tests check that too.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
PY="$ROOT/.venv/bin/python"
W=/tmp/pscap-refusals
rm -rf "$W" && mkdir -p "$W"
export RESTIC_PASSWORD=capture-pw-1234 RESTIC_CACHE_DIR="$W/cache"
export AWS_ACCESS_KEY_ID=AKIACAPTUREKEY AWS_SECRET_ACCESS_KEY=capture-secret-5678
"$PY" "$HERE/refusing_backend.py" 401 18401 & p1=$!
"$PY" "$HERE/refusing_backend.py" s3sig 18403 & p2=$!
"$PY" "$HERE/refusing_backend.py" 500 18500 & p3=$!
trap 'kill $p1 $p2 $p3' EXIT
for port in 18401 18403 18500; do
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
done
for v in 0.14 0.18; do
  if [ "$v" = 0.14 ]; then R=restic; else R="$ROOT/.venv/restic-0.18/restic"; fi
  OUT="$HERE/$v" && mkdir -p "$OUT"
  rec() { name=$1; shift; "$@" > "$OUT/$name.stdout" 2> "$OUT/$name.stderr"; echo $? > "$OUT/$name.rc"; }
  rec rest_401 "$R" -r rest:http://ana:wrong-pass-99@127.0.0.1:18401/repo snapshots --json
  rec rest_401_init "$R" -r rest:http://ana:wrong-pass-99@127.0.0.1:18401/repo init
  # 0.17+ retries a refused signature for ~15 minutes: SIGINT after a few notices.
  rec s3_signature timeout -s INT 8 "$R" -r s3:http://127.0.0.1:18403/bucket/repo snapshots --json
  rec s3_signature_init "$R" -r s3:http://127.0.0.1:18403/bucket/repo init
  rec rest_500_retrying timeout -s INT 8 "$R" -r rest:http://127.0.0.1:18500/repo snapshots --json
  "$R" -r "$W/repo-$v" init > /dev/null
  rec ls_unknown_snapshot "$R" -r "$W/repo-$v" ls --json deadbeef
  rec restore_unknown_snapshot "$R" -r "$W/repo-$v" restore --target "$W/t" deadbeef
done
