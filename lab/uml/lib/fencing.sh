# shellcheck shell=bash
# uml-cluster's fencing (sourced): the host side of dlm_controld's fence agent.
#
# Every node's dlm.conf names /shared/lab/fence-agent (guest/), which
# dlm_controld runs when a node that was in the DLM fails. The agent cannot
# kill another UML machine from inside one, so it writes a request into
# DIR/shared/fence/ and waits; the lab's fencer (started by `start` through
# the keeper, so it outlives whoever started the lab) runs `fence` for it
# and writes the answer back. dlm_controld recovers the failed node's locks
# only after the agent exits 0, so survivors are granted only after the
# node is dead.
#
#   fence DIR NODE [--failed-at EPOCH] [--by NAME]
#       kills every host process of a cluster node, unless it was booted
#       after EPOCH (the failed incarnation is gone already) or is down;
#       logs "fence NODE by=NAME result=killed|rebooted|down|acked"
#   fencing DIR on|off
#       off: requests are acknowledged without killing anything (result
#       acked), as `dlm_tool fence_ack` would: DLM recovery proceeds as if
#       fencing were not configured. For lab tests of other faults, and to
#       compare failover with and without fencing. `reset` turns it on.
#       A failure from while fencing was off (its time within the last off
#       period, to the second) is acknowledged too: corosync reports a
#       failure up to token + consensus (~8 s) after the fault, so a test
#       that partitioned with fencing off and then turned it on would
#       otherwise have the node killed after all (seen in CI).
#   fencer-serve DIR   (internal) the fencer's loop
#
# Requests: DIR/shared/fence/ID.req, lines node=K, fail_time=EPOCH, by=NAME;
# answers: ID.res, one line "ok: ..." or "error: ...". Both are written
# under a temporary name and renamed, so neither side reads half a file.

# DIR/fencing: "off OFF_EPOCH" or "on ON_EPOCH OFF_EPOCH": the mode, when it
# was set, and (when on) when the last off period began.
fencing_mode() { local m; [[ -f $lab/fencing ]] && read -r m _ <"$lab/fencing" && echo "$m" || echo on; }
# "FROM TO" of the last off period, when fencing is on again.
fencing_off_period() {
  local m on off
  [[ -f $lab/fencing ]] && read -r m on off <"$lab/fencing" || return 0
  [[ $m == on && -n $off ]] && echo "$off $on"
}

cmd_fence() {
  set_lab "${1:-}"
  (($# >= 2)) || usage
  load_env || exit 1
  local k failed_at= by=host
  k=$(cluster_node_num fence "$2") || exit 1
  shift 2
  while (($#)); do
    case $1 in
      --failed-at) failed_at=${2:-}; shift 2 || usage ;;
      --by) by=${2:-}; shift 2 || usage ;;
      *) log "error: fence: unknown argument '$1'"; usage ;;
    esac
  done
  [[ -z $failed_at || $failed_at =~ ^[0-9]{1,12}$ ]] || die "fence: --failed-at must be seconds since the epoch, not '$failed_at'"
  [[ $by =~ ^[A-Za-z0-9._-]{1,32}$ ]] || die "fence: --by must be a name of 1-32 of [A-Za-z0-9._-], not '$by'"
  local name booted
  name=$(node_name "$k")
  if [[ $(fencing_mode) == off ]]; then
    event_log fence "$name" "by=$by" result=acked
    echo "fencing is off: $name acknowledged as fenced without killing it"
    return 0
  fi
  local period
  period=$(fencing_off_period)
  if [[ -n $failed_at && -n $period ]] && ((failed_at >= ${period% *} && failed_at <= ${period#* })); then
    event_log fence "$name" "by=$by" result=acked "failed_at=$failed_at" "fencing_off=${period/ /-}"
    echo "$name failed at $failed_at, while fencing was off ($period): acknowledged without killing it"
    return 0
  fi
  booted=$(getv "LAB_NODE${k}_BOOTED")
  if [[ -n $failed_at && -n $booted ]] && ((booted > failed_at)); then
    event_log fence "$name" "by=$by" result=rebooted "booted=$booted" "failed_at=$failed_at"
    echo "$name was booted at $booted, after it failed at $failed_at: that incarnation is gone"
    return 0
  fi
  if [[ -z $(node_pids "$k") ]]; then
    clear_markers "$k"
    event_log fence "$name" "by=$by" result=down
    echo "$name is down already"
    return 0
  fi
  kill_node "$k" || die "fence: $name: some host processes did not die"
  clear_markers "$k"
  event_log fence "$name" "by=$by" result=killed
  echo "$name killed"
}

cmd_fencing() {
  set_lab "${1:-}"
  (($# == 2)) || usage
  load_env || exit 1
  case $2 in
    off) [[ $(fencing_mode) == off ]] || echo "off $(date +%s)" >"$lab/fencing.tmp" ;;
    on)
      local m t
      [[ -f $lab/fencing ]] && read -r m t _ <"$lab/fencing" || m=on
      [[ $m == off ]] && echo "on $(date +%s) $t" >"$lab/fencing.tmp"
      ;;
    *) die "fencing: say on or off, not '$2'" ;;
  esac
  if [[ -e $lab/fencing.tmp ]]; then mv "$lab/fencing.tmp" "$lab/fencing" || die "fencing: cannot write $lab/fencing"; fi
  event_log fencing lab "mode=$2"
}

# Starts the fencer through the keeper; records its pid.
start_fencer() {
  mkdir -p "$lab/shared/fence"
  local pid
  pid=$(keeper_launch "$lab/fencer.log" bash "$here/uml-cluster" fencer-serve "$lab") ||
    die "cannot start the fencer (see $lab/keeper.log)"
  setv LAB_FENCER_PID "$pid"
  setv LAB_FENCER_START "$(proc_start "$pid")"
  save_env
}

fencer_alive() { alive "$(getv LAB_FENCER_PID)" "$(getv LAB_FENCER_START)"; }

stop_fencer() {
  fencer_alive && kill -KILL "$(getv LAB_FENCER_PID)" 2>/dev/null
  return 0
}

cmd_fencer_serve() {
  set_lab "${1:-}"
  # A loop that must not end on one bad request (set -e would).
  set +e
  local dir=$lab/shared/fence req id k v node fail by out res
  while [[ -f $lab/lab.env ]]; do
    for req in "$dir"/*.req; do
      [[ -f $req ]] || continue
      id=${req##*/}
      id=${id%.req}
      node= fail= by=node
      # (The agent removes a request it gave up on: it may be gone by now.)
      { while IFS='=' read -r k v; do
        case $k in
          node) node=$v ;;
          fail_time) fail=$v ;;
          by) by=$v ;;
        esac
      done; } 2>/dev/null <"$req" || continue
      rm -f "$req"
      [[ $id =~ ^[A-Za-z0-9_.-]{1,80}$ ]] || continue
      if out=$("$here/uml-cluster" fence "$lab" "$node" ${fail:+--failed-at "$fail"} --by "$by" 2>&1); then
        res="ok: $out"
      else
        res="error: $out"
      fi
      printf '%s %s node=%s: %s\n' "$(now)" "$id" "$node" "$res"
      printf '%s\n' "${res//$'\n'/ }" >"$dir/$id.tmp" && mv "$dir/$id.tmp" "$dir/$id.res"
    done
    sleep 0.2
  done
}
