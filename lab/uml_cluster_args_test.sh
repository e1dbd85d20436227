#!/usr/bin/env bash
# uml-cluster's answers to bad input, without booting a lab: each must exit
# with the documented status and a message naming what is wrong.
set -uo pipefail
tool=${TEST_SRCDIR:-.}/latchkey/lab/uml/uml-cluster
[[ -x $tool ]] || tool=lab/uml/uml-cluster
tmp=$(mktemp -d /tmp/lk-args.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0

# expect STATUS PATTERN ARGS...: runs the tool, checks its status and stderr.
expect() {
  local want=$1 pattern=$2 got err
  shift 2
  err=$("$tool" "$@" 2>&1 >/dev/null)
  got=$?
  if [[ $got != "$want" ]] || ! grep -q -- "$pattern" <<<"$err"; then
    echo "FAIL: uml-cluster $* exited $got (want $want), said: $err (want /$pattern/)"
    fails=$((fails + 1))
  else
    echo "ok: uml-cluster $* -> $got: $(head -n 1 <<<"$err")"
  fi
}

expect 2 "unknown command 'frobnicate'" frobnicate
expect 1 "--nodes must be 2..5, not '9'" start "$tmp/a" --nodes 9
expect 1 "--lun needs --storage" start "$tmp/a" --lun vm:64
expect 1 "--sanlock needs --storage" start "$tmp/a" --sanlock
expect 1 "must be NAME:MIB" start "$tmp/a" --storage --lun VM:64
expect 1 "must be NAME:MIB" start "$tmp/a" --storage --lun 'vm;rm:64'
expect 1 "size 8 MiB is not within 16..65536" start "$tmp/a" --storage --lun vm:8
expect 1 "sector size 1024 is not 512 or 4096" start "$tmp/a" --storage --lun vm:64:1024
expect 1 "must be NAME:MIB" start "$tmp/a" --storage --lun vm:64:4096:1
expect 1 "LUN name 'vm' given twice" start "$tmp/a" --storage --lun vm:64,vm:128
expect 1 "--sanlock needs a LUN named 'lease'" start "$tmp/a" --storage --sanlock --lun vm:64
expect 1 "--nfs-lease must be 5..3600 seconds" start "$tmp/a" --storage --nfs-lease 2
expect 1 "may only contain" start "$tmp/a b"
expect 125 "no lab in" run "$tmp/none" 1 -- true
expect 125 "no lab in" spawn "$tmp/none" 1 --log /tmp/x -- true
expect 1 "no lab in" partition "$tmp/none" 1 2
expect 1 "no lab in" storage-stall "$tmp/none" 1
expect 1 "no lab in" clock-jump "$tmp/none" 1 5
expect 0 "nothing to stop" stop "$tmp/none"

# A lab.env of a stopped lab: commands name the node or argument at fault.
mkdir -p "$tmp/lab"
printf 'LAB_NODES=3\nLAB_STORAGE=0\nLAB_STATE=stopped\n' >"$tmp/lab/lab.env"
expect 1 "no node 'node7'" kill "$tmp/lab" node7
expect 1 "has no storage node" kill "$tmp/lab" storage
expect 1 "has no storage wire" cut "$tmp/lab" 1 --wire storage
expect 1 "--wire must be cluster, storage or both" cut "$tmp/lab" 1 --wire moon
expect 1 "node3 is on no side" partition "$tmp/lab" 1 2
expect 1 "node2 is on two sides" partition "$tmp/lab" 1,2 2,3
expect 1 "not a whole number of seconds" clock-jump "$tmp/lab" 1 1e9
expect 1 "not a process name" daemon-kill "$tmp/lab" 1 'a b'
expect 1 "has no storage node" storage-stall "$tmp/lab" 1
expect 1 "is stopped, not running" reset "$tmp/lab"
expect 125 "--log must be an absolute path" spawn "$tmp/lab" 1 --log rel.log -- true
expect 1 "--failed-at must be seconds since the epoch" fence "$tmp/lab" 1 --failed-at yesterday
expect 1 "--by must be a name" fence "$tmp/lab" 1 --by 'a;b'
expect 1 "no node 'node7'" fence "$tmp/lab" node7
expect 1 "has no storage node" fence "$tmp/lab" storage
expect 2 "unknown argument '--now'" fence "$tmp/lab" 1 --now
expect 1 "say on or off, not 'maybe'" fencing "$tmp/lab" maybe

echo "$fails failed"
((fails == 0))
