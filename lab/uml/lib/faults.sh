# shellcheck shell=bash
# uml-cluster's storage, daemon and clock faults (sourced). Network faults
# are in network.sh, node faults (kill, freeze, restart) in the main script.
#
#   storage-stall NODE / storage-resume NODE
#       every packet of the node's storage wire dropped (nft, both ways):
#       its iSCSI I/O hangs, and fails after the session's replacement
#       timeout (lk_iscsi_replacement, 10 s); its NFS calls hang (hard
#       mount) and its NFSv4 lease expires after the lease time. On the
#       storage node: every node stalls at once.
#   storage-errors NODE [LUN] / storage-errors-clear NODE [LUN]
#       the node's SCSI device of LUN (default: all) set offline: every I/O
#       fails at once with an error; "running" again on clear.
#   daemon-kill NODE NAME [SIGNAL]
#       signals (default KILL) every process named NAME in the node (pkill
#       -x); an error when there is none. On the storage node "nfsd" stops
#       the NFS server (rpc.nfsd 0).
#   nfs-restart
#       stops and starts the NFS server; every running node then talks to
#       it, so it reclaims its state within the grace period (lk_nfs_lease
#       seconds), and the command returns when that period is over.
#   clock-jump NODE SECONDS
#       steps the node's wall clock by SECONDS (negative: back).
# Slow storage I/O is netem on the storage wire (network.sh).

storage_rules() {
  cat <<EOF
table ip latchkey_storage
delete table ip latchkey_storage
table ip latchkey_storage {
  chain in { type filter hook input priority 0; policy accept; iifname "eth1" drop; }
  chain out { type filter hook output priority 0; policy accept; oifname "eth1" drop; }
}
EOF
}

need_storage() {
  [[ $(getv LAB_STORAGE) == 1 ]] || die "$1: $lab has no storage node (start the lab with --storage)"
}

running_or_die() {
  [[ $(node_state "$2") == running ]] || die "$1: $(node_name "$2") is $(node_state "$2")"
}

cmd_storage_stall() {
  local what=$1
  set_lab "${2:-}"
  (($# == 3)) || usage
  load_env || exit 1
  need_storage "$what"
  local k name
  k=$(node_num "$3") || exit 1
  name=$(node_name "$k")
  running_or_die "$what" "$k"
  if [[ $what == storage-stall ]]; then
    storage_rules >"$lab/shared/$name/storage-stall.nft"
    node_must "$what" "$k" nft -f "/shared/$name/storage-stall.nft"
    touch "$lab/n$k.stalled"
  else
    channel_run "$k" 20 sh -c 'nft list table ip latchkey_storage >/dev/null 2>&1 || exit 0; nft delete table ip latchkey_storage' ||
      die "$what: removing the rules on $name failed"
    ((run_rc == 0)) || die "$what: removing the rules on $name exited $run_rc"
    rm -f "$lab/n$k.stalled"
  fi
  event_log "$what" "$name"
}

cmd_storage_errors() {
  local what=$1
  set_lab "${2:-}"
  (($# == 3 || $# == 4)) || usage
  load_env || exit 1
  need_storage "$what"
  local k lun=${4:-all} state=offline
  k=$(cluster_node_num "$what" "$3") || exit 1
  running_or_die "$what" "$k"
  [[ $what == storage-errors-clear ]] && state=running
  if [[ $lun != all ]]; then
    grep -q "^$lun " "$lab/shared/node$k/luns" 2>/dev/null || die "$what: node$k has no LUN '$lun' (see $lab/shared/node$k/luns)"
  fi
  local script='
    n=0
    while read -r name wwid dev; do
      [ "$1" = all ] || [ "$1" = "$name" ] || continue
      echo "$2" >"/sys/block/${dev#/dev/}/device/state" || exit 1
      n=$((n + 1))
    done </shared/node'"$k"'/luns
    [ "$n" -gt 0 ]'
  node_must "$what" "$k" sh -c "$script" sh "$lun" "$state"
  event_log "$what" "node$k" "lun=$lun"
}

cmd_daemon_kill() {
  set_lab "${1:-}"
  (($# == 3 || $# == 4)) || usage
  load_env || exit 1
  local k name=$3 sig=${4:-KILL}
  k=$(node_num "$2") || exit 1
  [[ $name =~ ^[A-Za-z0-9._-]{1,15}$ ]] || die "daemon-kill: '$name' is not a process name (1-15 of [A-Za-z0-9._-])"
  [[ $sig =~ ^[A-Z0-9]{1,10}$ ]] || die "daemon-kill: '$sig' is not a signal name"
  running_or_die daemon-kill "$k"
  if ((k == 0)) && [[ $name == nfsd ]]; then
    node_must daemon-kill 0 rpc.nfsd 0
  else
    channel_run "$k" 20 pkill "-$sig" -x "$name" || die "daemon-kill: pkill on $(node_name "$k") failed"
    case $run_rc in
      0) ;;
      1) die "daemon-kill: no process named '$name' on $(node_name "$k")" ;;
      *) die "daemon-kill: pkill -$sig -x $name on $(node_name "$k") exited $run_rc" ;;
    esac
  fi
  event_log daemon-kill "$(node_name "$k")" "daemon=$name" "signal=$sig"
}

cmd_nfs_restart() {
  set_lab "${1:-}"
  (($# == 1)) || usage
  load_env || exit 1
  need_storage nfs-restart
  running_or_die nfs-restart 0
  node_must nfs-restart 0 rpc.nfsd 0
  event_log daemon-kill storage daemon=nfsd signal=stop
  node_must nfs-restart 0 rpc.nfsd -N 3 --no-udp 8
  local t0 lease k
  t0=$(now)
  lease=$(getv LAB_NFS_LEASE)
  event_log nfs-restart storage "grace=${lease}s"
  # Every running node talks to the server within the grace period, so it
  # learns of the restart and reclaims its locks in time (a client that
  # stays silent until the grace period is over loses them: "NFS: ADDR:
  # lost N locks" in its kernel log). Then wait out the grace period, so
  # the next user sees a server that grants new locks.
  for ((k = 1; k <= LAB_NODES; k++)); do
    [[ $(node_state "$k") == running ]] && probe "$k" "$lease" sh -c 'ls /mnt/nfs >/dev/null' &
  done
  wait
  local left=$((lease * 1000 + 500 - ($(now) - t0)))
  ((left > 0)) && sleep "$(secs "$left")"
  return 0
}

cmd_clock_jump() {
  set_lab "${1:-}"
  (($# == 3)) || usage
  load_env || exit 1
  local k s=$3
  k=$(node_num "$2") || exit 1
  [[ $s =~ ^[-+]?[0-9]{1,9}$ ]] || die "clock-jump: '$s' is not a whole number of seconds"
  running_or_die clock-jump "$k"
  node_must clock-jump "$k" sh -c 't=$(date +%s.%N); date -s "@$(( ${t%.*} + $1 )).${t#*.}" >/dev/null' sh "${s#+}"
  event_log clock-jump "$(node_name "$k")" "seconds=$s"
}
