# shellcheck shell=bash
# uml-cluster's shared helpers (sourced): messages, process bookkeeping,
# lab.env, argument checks, mconsole and the host side of the command
# channel. Expects $prog and $lab to be set by the caller.

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { local t=${EPOCHREALTIME/./}; echo "${t:0:-3}"; } # milliseconds
secs() { printf '%d.%01d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

# Closes every fd above 2, so daemons we spawn keep no caller's pipe or lock open.
close_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
  done
  return 0
}

# --- process bookkeeping -------------------------------------------------

# Start time (clock ticks since boot) of PID, empty when it is gone or a zombie.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  local -a f
  read -ra f <<<"$stat"
  [[ ${f[0]} == Z || ${f[0]} == X ]] && return 0
  echo "${f[19]}"
}

# True when PID is alive and is the process recorded with START.
alive() { [[ -n ${1:-} && ${1:-0} != 0 && -n ${2:-} && "$(proc_start "$1")" == "$2" ]]; }

# --- lab.env ---------------------------------------------------------------

declare -A env=()
getv() { echo "${env[$1]:-}"; }
setv() { env[$1]=$2; }

load_env() {
  local file=$lab/lab.env k v
  [[ -r $file ]] || {
    log "error: no lab in $lab ($file is missing; run '$prog start $lab' first)"
    return 1
  }
  while IFS='=' read -r k v; do
    [[ $k == LAB_* ]] && env[$k]=$v
  done <"$file"
  LAB_NODES=$(getv LAB_NODES)
  LAB_HOLDER_PID=$(getv LAB_HOLDER_PID)
  LAB_HOLDER_START=$(getv LAB_HOLDER_START)
  return 0
}

save_env() {
  local k
  {
    echo "# latchkey UML cluster lab (lab/uml/uml-cluster, docs/lab.md); shell syntax"
    for k in $(printf '%s\n' "${!env[@]}" | sort -V); do echo "$k=${env[$k]}"; done
  } >"$lab/lab.env.tmp"
  mv -f "$lab/lab.env.tmp" "$lab/lab.env"
}

# Serializes commands that change the lab (not `run`): waits up to $1 seconds.
lock_lab() {
  exec {lab_lock}>>"$lab/.lock"
  flock -w "$1" "$lab_lock" || {
    log "error: another $prog command holds $lab/.lock (gave up after $1 s)"
    return 1
  }
}

# --- argument helpers ------------------------------------------------------

set_lab() {
  [[ -n ${1:-} ]] || usage
  lab=$(realpath -m -- "$1")
}

# Prints K for "K" or "nodeK" within 1..LAB_NODES, and 0 for "storage"
# when the lab has a storage node.
node_num() {
  local a=${1:-} k
  if [[ $a == storage || $a == 0 ]]; then
    [[ $(getv LAB_STORAGE) == 1 ]] && { echo 0; return 0; }
    log "error: $lab has no storage node (start it with --storage)"
    return 1
  fi
  k=${a#node}
  [[ $k =~ ^[1-9][0-9]*$ ]] && ((k <= ${LAB_NODES:-0})) || {
    log "error: no node '$a' in $lab (nodes are 1..${LAB_NODES:-?}, node1..node${LAB_NODES:-?} or storage)"
    return 1
  }
  echo "$k"
}

# The number of a cluster node (not the storage node) for command $1.
cluster_node_num() {
  local k
  k=$(node_num "$2") || return 1
  ((k > 0)) || { log "error: $1: the storage node is not a cluster node"; return 1; }
  echo "$k"
}

in_netns() { nsenter -t "$LAB_HOLDER_PID" -n -- "$@"; }

mconsole() {
  local k=$1
  shift
  holder_alive || { log "error: the lab's network namespace holder (pid ${LAB_HOLDER_PID:-?}) is gone"; return 1; }
  # uml_mconsole first tries the argument as a umid and warns about that.
  timeout 10 nsenter -t "$LAB_HOLDER_PID" -n -- uml_mconsole "$lab/run/$(node_name "$k")/mconsole" "$@" 2>&1 |
    grep -v "^Warning: couldn't stat file"
}

# --- the command channel (host side; see node-init) --------------------------

# Runs argv in node K; sets run_rc; stdout/stderr to ours. Returns nonzero only
# for lab errors (then run_rc is 125) and timeouts (run_rc 124).
channel_run() {
  local k=$1 timeout=$2
  shift 2
  local q name
  name=$(node_name "$k")
  q=$lab/shared/$name/cmd
  local id
  id=$(now)-$$-$RANDOM
  [[ -d $q ]] || { log "error: $name has no command channel ($q is missing)"; run_rc=125; return 1; }
  [[ -n ${run_detach_log:-} ]] && echo "$run_detach_log" >"$q/$id.detach"
  printf '%s\0' "$@" >"$q/$id.tmp"
  mv "$q/$id.tmp" "$q/$id.cmd"
  local deadline=$(($(now) + timeout * 1000)) nap=0.005 n=0 rc
  run_cleanup_id=$id run_cleanup_q=$q
  while :; do
    if [[ -s $q/$id.rc ]]; then
      read -r rc <"$q/$id.rc"
      [[ $rc == *[!0-9]* || -z $rc ]] && { sleep 0.01; read -r rc <"$q/$id.rc"; }
      cat "$q/$id.out" 2>/dev/null || true
      cat "$q/$id.err" >&2 2>/dev/null || true
      rm -f "$q/$id".*
      run_cleanup_id=
      run_rc=$rc
      return 0
    fi
    if ((++n % 50 == 0)) && ! node_alive "$k"; then
      log "error: $name died while running: $*"
      death_clues "$k"
      rm -f "$q/$id".*
      run_cleanup_id=
      run_rc=125
      return 1
    fi
    if (($(now) > deadline)); then
      log "error: timeout: '$*' on $name did not finish within $timeout s; killed its process group"
      abandon_cmd "$k" "$q" "$id"
      run_cleanup_id=
      run_rc=124
      return 1
    fi
    sleep "$nap"
    [[ $nap == 0.005 ]] && ((n > 20)) && nap=0.02
  done
}

# Why machine K may have died, for the error above: the lab's events naming
# it (a fence, a kill) and the last lines of its console (a panic, a watchdog,
# corosync's exit).
death_clues() {
  local k=$1 name
  name=$(node_name "$k")
  awk -v n="$name" '$3 == n' "$lab/events.log" 2>/dev/null | tail -n 4 | sed "s/^/$name event| /" >&2
  [[ -s $lab/n$k.console ]] && tail -n 12 "$lab/n$k.console" | tr -d '\r' | grep -v '^$' | sed "s/^/$name console| /" >&2
  return 0
}

# Kills a command that is still running in the node (by its process group)
# and removes its files.
abandon_cmd() {
  local k=$1 q=$2 id=$3 pid=
  [[ -s $q/$id.pid ]] && read -r pid <"$q/$id.pid"
  rm -f "$q/$id.cmd"
  if [[ -n $pid ]] && [[ $(node_state "$k") == running ]]; then
    local kid
    kid=$(now)-$$-kill-$RANDOM
    printf '%s\0' kill -KILL -- "-$pid" >"$q/$kid.tmp"
    mv "$q/$kid.tmp" "$q/$kid.cmd"
    local i
    for ((i = 0; i < 100; i++)); do
      [[ -s $q/$kid.rc ]] && break
      sleep 0.02
    done
    rm -f "$q/$kid".*
  fi
  rm -f "$q/$id".*
}

on_run_signal() {
  [[ -n ${run_cleanup_id:-} ]] && abandon_cmd "$run_node" "$run_cleanup_q" "$run_cleanup_id"
  exit 130
}

# Runs a short diagnostic command in node K; its output on stdout, nothing on failure.
probe() {
  local k=$1 t=$2
  shift 2
  channel_run "$k" "$t" "$@" 2>/dev/null || true
}
