#!/bin/sh
# Re-record the restic 0.14 outputs in ./0.14 from the installed restic (Debian bookworm).
# Each case NAME leaves NAME.stdout, NAME.stderr and NAME.rc (exit code). Paths under
# /tmp/pscap and the hostname of the recording machine end up in the files; tests do not
# depend on them. Needs: restic, truncate, and /proc/sys/vm/drop_caches (mode 0200, which
# even root cannot read) for the "unreadable file" case.
set -u
OUT="$(cd "$(dirname "$0")" && pwd)/0.14"
W=/tmp/pscap
rm -rf "$W" && mkdir -p "$W/src/sub" "$OUT"
export RESTIC_PASSWORD=capture-pw-1234
export RESTIC_REPOSITORY="$W/repo"
export RESTIC_CACHE_DIR="$W/cache"
for i in 1 2 3; do head -c 300000 /dev/urandom > "$W/src/f$i.bin"; done
echo hello > "$W/src/sub/a.txt"
mkdir -p "$W/big" && for i in $(seq 1 30); do head -c 4000000 /dev/urandom > "$W/big/f$i.bin"; done

rec() { name=$1; shift; "$@" > "$OUT/$name.stdout" 2> "$OUT/$name.stderr"; echo $? > "$OUT/$name.rc"; }

rec version restic version
rec init restic init
rec init_exists restic init
rec cat_config restic cat config
rec backup restic backup --json --tag plan:p1 --tag host:me --host myhost "$W/src"
rec backup_big restic backup --json "$W/big"
echo more > "$W/src/sub/b.txt"
rec backup_vv restic backup --json -vv "$W/src"
rec backup_partial restic backup --json "$W/src" /proc/sys/vm/drop_caches
rec backup_partial_text restic backup "$W/src" /proc/sys/vm/drop_caches
rec backup_skip_missing restic backup --json "$W/src" "$W/missing"
rec backup_source_missing restic backup --json "$W/missing"
# A slow stdin backup: restic 0.14's ETA overflows to 2^63 while no byte has arrived yet.
(sleep 3; echo data) | rec backup_stdin_slow restic backup --json --stdin --stdin-filename held.txt
rec snapshots restic snapshots --json
rec snapshots_tag restic snapshots --json --tag plan:p1
rec forget_dry restic forget --json --dry-run --keep-last 1 --group-by host,paths
rec ls restic ls --json latest
rec ls_unknown restic ls --json deadbeef
rec stats restic stats --json
rec stats_raw restic stats --json --mode raw-data
rec check restic check --read-data-subset 1/2
rec restore restic restore latest --target "$W/restore"
rec forget_prune restic forget --json --keep-last 1 --prune
rec prune restic prune
rec unknown_flag restic snapshots --bogus
RESTIC_PASSWORD=wrong-pw-5678 rec wrong_password restic snapshots --json
RESTIC_REPOSITORY="$W/nope" rec repo_missing restic snapshots --json
RESTIC_REPOSITORY=rest:http://alice:rest-secret-99@127.0.0.1:1/repo rec rest_unreachable restic snapshots --json
RESTIC_REPOSITORY=sftp:nobody@127.0.0.1:/repo rec sftp_unreachable timeout 30 restic -o sftp.command="ssh -p 1 -o BatchMode=yes nobody@127.0.0.1 -s sftp" snapshots --json
# Assumes nothing listens on 127.0.0.1:22 on the recording machine.
RESTIC_REPOSITORY=sftp:nobody@127.0.0.1:/repo rec sftp_refused timeout 30 restic snapshots --json
(unset RESTIC_PASSWORD; RESTIC_PASSWORD_FILE="$W/no-such-file" rec password_file_missing restic snapshots --json)

# A lock held by a backup reading a pipe that stays open; prune needs an exclusive lock.
mkfifo "$W/fifo"
(sleep 6 > "$W/fifo") &
restic backup --stdin --stdin-filename held.txt < "$W/fifo" > /dev/null 2>&1 &
while [ -z "$(ls "$W/repo/locks" 2>/dev/null)" ]; do sleep 0.1; done
rec locked restic prune
wait

# SIGINT during a long backup: exit 130, lock removed.
truncate -s 20G "$W/sparse.img"
restic backup --json "$W/sparse.img" > "$OUT/interrupted.stdout" 2> "$OUT/interrupted.stderr" &
pid=$!
sleep 2
kill -INT $pid
wait $pid; echo $? > "$OUT/interrupted.rc"
ls "$W/repo/locks" > "$OUT/interrupted.locks_left"
# keep the first and last few status lines only
{ head -n 3 "$OUT/interrupted.stdout"; tail -n 3 "$OUT/interrupted.stdout"; } > "$OUT/interrupted.tmp"
mv "$OUT/interrupted.tmp" "$OUT/interrupted.stdout"
rm -rf "$W"
