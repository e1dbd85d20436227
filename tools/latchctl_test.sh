#!/usr/bin/env bash
# latchctl end to end on the real posixfd plugin: contention, status, bad
# input. Every process started here is stopped by its PID.
set -uo pipefail
latchctl="$TEST_SRCDIR/latchkey/tools/latchctl"
plugins="$TEST_SRCDIR/latchkey/backends"
work="$TEST_TMPDIR/latchctl"
mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
ctl() { "$latchctl" --plugin-path "$plugins" --config "$work/c.conf" "$@"; }

printf 'backend = "posixfd"\nlockspace = "t"\nposixfd_lock_dir = "%s/locks"\n' "$work" >"$work/c.conf"
: >"$work/disk.img"

ctl backends | grep -q '^posixfd' || fail "backends does not list posixfd"

"$latchctl" --plugin-path "$plugins" --config "$work/c.conf" \
  acquire --disk "$work/disk.img" --owner vm-one --hold >"$work/one.out" 2>&1 &
holder=$!
trap 'kill -KILL $holder 2>/dev/null' EXIT
for _ in $(seq 200); do grep -q granted "$work/one.out" && break; sleep 0.02; done
grep -q "granted exclusive disk $work/disk.img" "$work/one.out" || fail "holder: $(cat "$work/one.out")"

out=$(ctl acquire --disk "$work/disk.img" --owner vm-two --mode shared-read 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "second acquire exited $rc, want 1: $out"
for want in "$work/disk.img" "held exclusive by vm-one" "pid $holder" "wanted shared-read by vm-two"; do
  [[ $out == *"$want"* ]] || fail "refusal lacks '$want': $out"
done

json=$(ctl status --json) || fail "status --json failed"
[[ $json == *'"owner":"vm-one"'* && $json == *'"mode":"exclusive"'* ]] || fail "status: $json"

kill -TERM "$holder"; wait "$holder"
grep -q "released disk $work/disk.img" "$work/one.out" || fail "no release: $(cat "$work/one.out")"
ctl status | grep -q '^0 locks held' || fail "locks left after release: $(ctl status)"

printf 'backend = "posixfd"\nposixfd_lock_dir = 12\n' >"$work/bad.conf"
out=$("$latchctl" --plugin-path "$plugins" --config "$work/bad.conf" status 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"bad.conf:2: 'lock_dir' must be a string"* ]] || fail "bad config ($rc): $out"
out=$(ctl --backend nosuch status 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"unknown backend 'nosuch'"* && $out == *"available: posixfd"* ]] || fail "unknown backend ($rc): $out"
out=$(ctl acquire --lease "../x" --owner vm 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"must not start with"* ]] || fail "bad lease key ($rc): $out"
out=$(ctl frobnicate 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"unknown command 'frobnicate'"* ]] || fail "unknown command ($rc): $out"
echo PASS
