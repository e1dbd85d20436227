# shellcheck shell=bash
# latchkey UML lab, guest side: sanlock with a watchdog on a cluster node
# (lk_sanlock=1, which needs the storage node). Sourced by node-init from
# /shared/lab/; uses its helpers (say, phase, nap) and variables (node, out).
#
# sanlock_bringup  starts wdmd on UML's harddog and a sanlock daemon that
#                  uses it (-w 1, host name nodeK); node1 initializes the
#                  lockspace "latchkey" at offset 0 of the LUN "lease" (io
#                  timeout 2 s) when it holds none; every node waits until it does. Records
#                  the phase sanlock-ready.
#
# harddog's timer runs in a host process (uml_watchdog), so a node that
# stops petting it is killed from outside even when the node is frozen.
# wdmd pets it while every sanlock lockspace is renewed; sanlock stops wdmd's
# petting for a lockspace whose renewal failed, and the host kills the node
# 60 s after the last pet (harddog's fixed timeout; wdmd's fire_timeout).
# Logs: /shared/nodeK/wdmd.log, /shared/nodeK/sanlock.log (the daemon's -D
# output) and /var/log/sanlock.log in the node.

sanlock_lockspace=latchkey
# The lockspace's io_timeout, written into every host slot at init: a host
# joins in about 2 x 2 + 1 s, and its renewal fails 8 x 2 = 16 s after its
# storage stops answering (sanlock's default, 10 s, would make that 80 s).
sanlock_io_timeout=2

# The watchdog device of harddog (a misc device named "watchdog"), or "".
harddog_device() {
  local d
  for d in /sys/class/watchdog/watchdog*; do
    [[ -e $d/identity ]] || continue
    if [[ $(<"$d/identity") == *UML* ]]; then echo "/dev/${d##*/}"; return; fi
  done
  [[ -e /sys/class/misc/watchdog ]] && echo /dev/watchdog
}

sanlock_bringup() {
  local i dev
  dev=$(harddog_device)
  [[ -n $dev && -c $dev ]] || { phase failed "no harddog watchdog device (CONFIG_UML_WATCHDOG)"; return 1; }
  mkdir -p /run/wdmd /run/sanlock /var/log
  wdmd -D -w "$dev" -G root </dev/null >>"$out/wdmd.log" 2>&1 &
  for ((i = 0; ; i++)); do
    [[ -S /run/wdmd/wdmd.sock ]] && break
    ((i == 80)) && { phase failed "wdmd did not start on $dev (see $out/wdmd.log)"; return 1; }
    nap 0.25
  done
  sanlock daemon -D -w 1 -U root -G root -e "node$node" </dev/null >>"$out/sanlock.log" 2>&1 &
  for ((i = 0; ; i++)); do
    sanlock client status >/dev/null 2>&1 && break
    ((i == 80)) && { phase failed "sanlock daemon did not answer (see $out/sanlock.log)"; return 1; }
    nap 0.25
  done
  local ls=$sanlock_lockspace:1:/dev/lab/lease:0
  if ((node == 1)) && ! sanlock direct read_leader -s "$ls" >/dev/null 2>&1; then
    sanlock direct init -o "$sanlock_io_timeout" -s "$sanlock_lockspace:0:/dev/lab/lease:0" >>"$out/sanlock.log" 2>&1 ||
      { phase failed "sanlock direct init of lockspace $sanlock_lockspace on /dev/lab/lease failed"; return 1; }
  fi
  for ((i = 0; ; i++)); do
    sanlock direct read_leader -s "$ls" >/dev/null 2>&1 && break
    ((i == 240)) && { phase failed "lockspace $sanlock_lockspace on /dev/lab/lease was never initialized"; return 1; }
    nap 0.25
  done
  phase sanlock-ready "wdmd on $dev, lockspace $sanlock_lockspace on /dev/lab/lease"
}
