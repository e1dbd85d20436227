#!/usr/bin/env bash
# latchctl end to end against a real latchd (posixfd backend) with a private
# config, socket, state and lock directory: status, run (contention, exit
# codes, signals), register/acquire/release with the hand-off state string,
# the journal dump (also with latchd down), errors and their exit statuses
# (also against a fake latchd that never answers or closes at once), and
# libvirt-check. Every process started here is stopped by its PID.
set -uo pipefail
latchctl="$TEST_SRCDIR/latchkey/tools/latchctl"
latchd="$TEST_SRCDIR/latchkey/agent/latchd"
fake_latchd="$TEST_SRCDIR/latchkey/tools/fake_latchd"
# Not under $TEST_TMPDIR: a Unix socket path must fit in 108 bytes.
work=$(mktemp -d /tmp/latchctl-test.XXXXXX)
sock="$work/latchd.sock"
latchd_pid=""
bg_pids=()
cleanup() {
  for p in "${bg_pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ -n $latchd_pid ]]; then
    kill -TERM "$latchd_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$latchd_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$latchd_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP PIPE
fail() {
  echo "FAIL: $*" >&2
  echo "--- latchd log:" >&2
  cat "$work/latchd.log" >&2
  exit 1
}
ctl() { "$latchctl" --socket "$sock" "$@"; }
wait_for() {  # wait_for FILE: up to 10 s
  for _ in $(seq 500); do [[ -e $1 ]] && return 0; sleep 0.02; done
  return 1
}

cat >"$work/latchd.conf" <<CONF
state_dir = "$work/state"
socket = "$sock"
allowed_uids = [ $(id -u) ]
log_syslog = 0
lockspace = "t"
posixfd_lock_dir = "$work/locks"
CONF
mkdir -p "$work/state"
: >"$work/a.img"
: >"$work/b.img"
ln -s "$work/a.img" "$work/alias.img"

"$latchd" --config "$work/latchd.conf" >"$work/latchd.log" 2>&1 &
latchd_pid=$!
for _ in $(seq 500); do [[ -S $sock ]] && break; kill -0 "$latchd_pid" 2>/dev/null || break; sleep 0.02; done
[[ -S $sock ]] || fail "latchd did not create $sock"

# --- an empty agent
out=$(ctl status) || fail "status on an empty agent: $out"
[[ $out == *"no owners registered"* && $out == *"posixfd (healthy)"* ]] || fail "empty status: $out"
json=$(ctl status --json) || fail "status --json"
[[ $json == *'"owners":[]'* ]] || fail "empty status --json: $json"

# --- run: vm-one holds a.img until told to stop, then exits 3
"$latchctl" --socket "$sock" run --disk "$work/a.img" --owner vm-one -- \
  sh -c "touch '$work/one.started'; while [ ! -e '$work/one.stop' ]; do sleep 0.02; done; exit 3" \
  >"$work/one.out" 2>&1 &
one=$!
bg_pids+=("$one")
wait_for "$work/one.started" || fail "run did not start its command: $(cat "$work/one.out")"

out=$(ctl run --disk "$work/alias.img" --mode shared-read --wait 0 --owner vm-two -- \
  touch "$work/two.ran" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "second run on the same disk exited $rc, want 1: $out"
[[ $out == *"$work/a.img"* && $out == *vm-one* ]] || fail "refusal does not name disk and holder: $out"
[[ ! -e $work/two.ran ]] || fail "a refused run ran its command"

out=$(ctl run --disk "$work/b.img" --owner vm-three -- sh -c "touch '$work/three.ran'" 2>&1) ||
  fail "run on another disk: $out"
[[ -e $work/three.ran ]] || fail "run on another disk did not run its command"

out=$(ctl status) || fail "status: $out"
[[ $out == *vm-one* && $out == *exclusive* && $out == *"$work/a.img"* && $out != *vm-three* ]] ||
  fail "status while vm-one holds a.img: $out"

[[ $out == *"disk names identity+path"* && $out == *"$work/a.img [identity: "* ]] ||
  fail "status does not show the naming scheme and the disk's identity: $out"

# --- identities: a hard link is the same disk; a missing image is weak
ln "$work/a.img" "$work/a-link.img"
out=$(ctl run --disk "$work/a-link.img" --owner vm-alias -- true 2>&1); rc=$?
[[ $rc -eq 1 && $out == *"the same disk as $work/a.img"* ]] ||
  fail "a hard link of a held disk ($rc): $out"
out=$(ctl identify --disk "$work/a.img" --disk "$work/a-link.img" --json) || fail "identify: $out"
ids=$(grep -o '"identity":"[^"]*"' <<<"$out" | sort -u | wc -l)
[[ $ids -eq 1 ]] || fail "identify gives the hard link another identity: $out"
out=$(ctl identify --disk "$work/not-there.img") || fail "identify a missing image: $out"
[[ $out == *"WEAK"*"does not exist"* ]] || fail "identify does not call a missing image weak: $out"
out=$(ctl identify --lease k 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"--disk PATH, not --lease"* ]] || fail "identify --lease ($rc): $out"

out=$(ctl journal --state-dir "$work/state") || fail "journal while held: $out"
[[ $out == *"boot "* && $out == *vm-one* && $out == *"posixfd held exclusive $work/a.img"* ]] ||
  fail "journal does not show the held lock: $out"
[[ $(ctl journal --journal "$work/state/journal.db" --json) == *'"state":"held"'* ]] ||
  fail "journal --json: $(ctl journal --journal "$work/state/journal.db" --json)"

touch "$work/one.stop"
wait "$one"; rc=$?
[[ $rc -eq 3 ]] || fail "run exited $rc, want its command's 3: $(cat "$work/one.out")"
out=$(ctl status) || fail "status: $out"
[[ $out == *"no owners registered"* ]] || fail "run left its owner behind: $out"

# --- run: signals and odd commands
out=$(ctl run --disk "$work/a.img" -- sh -c 'kill -TERM $$' 2>&1); rc=$?
[[ $rc -eq 143 ]] || fail "command killed by SIGTERM: run exited $rc, want 143: $out"
"$latchctl" --socket "$sock" run --disk "$work/a.img" -- sh -c "touch '$work/four.started'; exec sleep 30" &
four=$!
bg_pids+=("$four")
wait_for "$work/four.started" || fail "run did not start sleep"
kill -TERM "$four"
wait "$four"; rc=$?
[[ $rc -eq 143 ]] || fail "SIGTERM to run: exited $rc, want 143 (forwarded to its command)"
out=$(ctl run --disk "$work/a.img" -- "$work/no-such-program" 2>&1); rc=$?
[[ $rc -eq 127 && $out == *no-such-program* ]] || fail "missing command: $rc: $out"

# --- register, acquire, status --json, release, hand-off
src=11111111-1111-4111-8111-111111111111
dst=22222222-2222-4222-8222-222222222222
other=33333333-3333-4333-8333-333333333333
ctl register --owner vm-src --uuid $src --pid $$ --policy ignore >/dev/null || fail "register vm-src"
ctl register --owner vm-dst --uuid $dst --pid $$ >/dev/null || fail "register vm-dst"
out=$(ctl acquire --uuid $src --mode shared-write --disk "$work/a.img" --disk "$work/b.img" \
  --mode exclusive --lease lease1 2>&1) || fail "acquire: $out"
[[ $(grep -c '^granted' <<<"$out") -eq 3 ]] || fail "acquire of three resources: $out"
json=$(ctl status --json) || fail "status --json"
for want in '"name":"vm-src"' '"mode":"shared-write"' '"mode":"exclusive"' '"kind":"lease"' \
  '"policy":"ignore"'; do
  [[ $json == *"$want"* ]] || fail "status --json lacks $want: $json"
done
out=$(ctl acquire --uuid $dst --disk "$work/a.img" 2>&1); rc=$?
[[ $rc -eq 1 && $out == *vm-src* ]] || fail "conflicting acquire ($rc): $out"
out=$(ctl set-policy --uuid $src --policy pause 2>&1) || fail "set-policy: $out"
[[ $(ctl inquire --uuid $src) == *"policy pause"* ]] || fail "inquire after set-policy"

state=$(ctl release --uuid $src 2>/dev/null) || fail "release"
[[ $state == latchkey1\;* && $state == *:ex:* && $state == *:sw:* ]] ||
  fail "release did not print a state string: $state"
out=$(ctl acquire --uuid $dst --disk "$work/a.img" --mode sw --disk "$work/b.img" \
  --lease lease1 --state "$state" 2>&1) || fail "hand-off acquire with the state string: $out"
state2=$(ctl release --uuid $dst 2>/dev/null) || fail "release vm-dst"
ctl register --owner vm-other --uuid $other --pid $$ >/dev/null || fail "register vm-other"
ctl acquire --uuid $other --lease lease1 >/dev/null || fail "vm-other acquire"
ctl release --uuid $other >/dev/null 2>&1 || fail "vm-other release"
out=$(ctl acquire --uuid $src --lease lease1 --state "$state2" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "hand-off after someone slipped in: exited $rc, want 1 (aborted): $out"
out=$(ctl release --uuid $src --disk "$work/a.img" 2>&1); rc=$?
[[ $rc -eq 2 ]] || fail "releasing a lock not held: exited $rc, want 2 (not_found): $out"
for u in $src $dst $other; do ctl unregister --uuid $u >/dev/null || fail "unregister $u"; done
out=$(ctl inquire --uuid $src 2>&1); rc=$?
[[ $rc -eq 2 ]] || fail "inquire of an unregistered owner: exited $rc, want 2: $out"

# --- bad usage
out=$(ctl status --frob 2>&1); rc=$?
[[ $rc -eq 2 && $out == *--frob* ]] || fail "unknown option ($rc): $out"
out=$(ctl frobnicate 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"unknown command 'frobnicate'"* ]] || fail "unknown command ($rc): $out"
out=$(ctl acquire --uuid $src --lease ../x 2>&1); rc=$?
[[ $rc -eq 2 ]] || fail "bad lease key ($rc): $out"
out=$(ctl acquire --uuid $src --disk "$work/a.img" --mode bogus 2>&1); rc=$?
[[ $rc -eq 2 && $out == *--mode* ]] || fail "bad mode ($rc): $out"
# Not `ctl help | grep -q`: grep leaves at the first match and the rest of
# the (over 4 KiB) text meets a closed pipe (SIGPIPE; seen under ASan).
out=$(ctl help); rc=$?
[[ $rc -eq 0 && $out == "usage: latchctl"* && $out == *leases-clean* ]] || fail "help ($rc)"
# The lease-area commands: a backend not loaded, one without such commands,
# and bad usage are said clearly.
out=$(ctl leases 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"backend 'sanlock' is not loaded"* ]] || fail "leases without sanlock ($rc): $out"
out=$(ctl leases --backend posixfd 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"has no administrative commands"* ]] || fail "leases on posixfd ($rc): $out"
out=$(ctl leases-clean 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"--unused-for DURATION or --remove NAME"* ]] || fail "leases-clean usage ($rc): $out"
out=$(ctl leases-clean --unused-for soon 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"is not a duration"* ]] || fail "leases-clean duration ($rc): $out"
out=$(ctl leases-format 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"needs --lockspace"* ]] || fail "leases-format usage ($rc): $out"
"$latchctl" --plugin-path "$TEST_SRCDIR/latchkey/backends" backends | grep -q '^posixfd' ||
  fail "backends does not list posixfd"
# --json: the capabilities as the plugins declare them (posixfd's OFD locks
# die with the process holding them; nop excludes nobody).
out=$("$latchctl" --plugin-path "$TEST_SRCDIR/latchkey/backends/posixfd:$TEST_SRCDIR/latchkey/backends/nop" backends --json)
python3 -c "
import json, sys
b = {p['name']: p for p in json.loads(sys.argv[1])}
assert b['posixfd']['survives_holder_death'] is False, b
assert b['posixfd']['no_exclusion'] is False and b['nop']['no_exclusion'] is True, b
assert 'exclusive' in b['posixfd']['modes'], b
" "$out" || fail "backends --json is not what the plugins declare: $out"

# --- libvirt-check: qemu-latchkey.conf as latchkey.so reads it, and latchd's backends
conf="$work/qemu-latchkey.conf"
printf 'socket = "%s"\nbackend = "posixfd"\n' "$sock" >"$conf"
out=$(ctl libvirt-check --conf "$conf" 2>&1) || fail "libvirt-check of a good file ($?): $out"
[[ $out == *"$conf: ok"* && $out == *"loads: posixfd"* ]] || fail "libvirt-check of a good file: $out"
printf 'socket = "%s"\n\nbackend = "nope"\n' "$sock" >"$conf"
out=$(ctl libvirt-check --conf "$conf" 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"does not load backend 'nope' (it loads: posixfd); set 'backend' in $conf:3"* ]] ||
  fail "libvirt-check with a backend latchd does not load ($rc): $out"
printf 'backend = "po\xffsix"\n' >"$conf"
out=$(ctl libvirt-check --conf "$conf" 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"$conf:1: 'backend' is not valid UTF-8: \"po\\xffsix\""* ]] ||
  fail "libvirt-check of a non-UTF-8 backend ($rc): $out"
out=$(ctl libvirt-check --conf "$work/state" 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"$work/state is a directory, not a regular file"* ]] ||
  fail "libvirt-check of a directory ($rc): $out"
out=$(ctl libvirt-check --offline --conf "$work/none.conf" 2>&1) ||
  fail "libvirt-check --offline of a missing file ($?): $out"
[[ $out == *"does not exist, so the defaults apply"* ]] || fail "libvirt-check of a missing file: $out"
printf 'socket = "%s"\n' "$work/none.sock" >"$conf"
out=$(ctl libvirt-check --conf "$conf" 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"latchd is not running at $work/none.sock"* ]] ||
  fail "libvirt-check with latchd down ($rc): $out"

# --- no latchd there
out=$("$latchctl" --socket "$work/none.sock" status 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"latchd is not running at $work/none.sock"* ]] ||
  fail "no latchd ($rc): $out"
out=$(LATCHD_SOCKET="$work/none.sock" "$latchctl" status 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"$work/none.sock"* ]] || fail "LATCHD_SOCKET ($rc): $out"

# --- latchd that does not answer in time, or closes without answering: an
# error (3), never "refused" (1); no command runs
"$fake_latchd" "$work/mute.sock" mute 2>>"$work/latchd.log" &
bg_pids+=("$!")
"$fake_latchd" "$work/close.sock" close 2>>"$work/latchd.log" &
bg_pids+=("$!")
"$fake_latchd" "$work/full.sock" full 2>>"$work/latchd.log" &
bg_pids+=("$!")
for s in mute close full; do wait_for "$work/$s.sock" || fail "fake latchd ($s) did not start"; done
mute() { "$latchctl" --socket "$work/mute.sock" --timeout 0.3 "$@"; }
out=$(mute status 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"did not answer in time"* ]] || fail "status, latchd mute ($rc): $out"
out=$(mute acquire --uuid $src --disk "$work/a.img" --wait 0.2 2>&1); rc=$?
[[ $rc -eq 3 ]] || fail "acquire --wait, latchd mute ($rc): $out"
out=$(mute run --disk "$work/a.img" -- touch "$work/mute.ran" 2>&1); rc=$?
[[ $rc -eq 3 && ! -e $work/mute.ran ]] || fail "run, latchd mute ($rc): $out"
for cmd in status "inquire --uuid $src" reexec; do
  out=$("$latchctl" --socket "$work/close.sock" $cmd 2>&1); rc=$?
  [[ $rc -eq 3 && $out == *"$work/close.sock"* ]] || fail "$cmd, latchd closes at once ($rc): $out"
done
out=$("$latchctl" --socket "$work/full.sock" --timeout 0.3 status 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"did not accept the connection"* ]] || fail "status, latchd not accepting ($rc): $out"
out=$(ctl --timeout soon status 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"--timeout 'soon'"* ]] || fail "bad --timeout ($rc): $out"

# --- the journal can be read while latchd is down
kill -TERM "$latchd_pid"
for _ in $(seq 200); do kill -0 "$latchd_pid" 2>/dev/null || break; sleep 0.05; done
kill -0 "$latchd_pid" 2>/dev/null && fail "latchd did not stop on SIGTERM"
wait "$latchd_pid" 2>/dev/null
latchd_pid=""
out=$(ctl journal --state-dir "$work/state") || fail "journal with latchd down: $out"
[[ $out == *"locks: 0"* ]] || fail "journal after everything was released: $out"
out=$(ctl status 2>&1); rc=$?
[[ $rc -eq 3 && $out == *"latchd is not running at $sock"* ]] || fail "status with latchd down ($rc): $out"
echo PASS
