# shellcheck shell=bash
# uml-cluster's nodes (sourced): finding, booting, waiting for and killing
# the UML processes of cluster nodes 1..N and of the storage node (number 0).

# Every host process of node K: the UML main process (recorded PID, leader of
# its own session), the processes it cloned, all running DIR/linux in that
# session, and the host helpers it started in it (uml_watchdog, harddog's
# timer, which would otherwise SIGKILL the node's old PID 60 s after its
# death, whoever has that PID by then). Found by session, so they are found
# even after the main one died.
node_pids() {
  local k=$1 sid
  sid=$(getv "LAB_NODE${k}_PID")
  [[ -n $sid && $sid != 0 ]] || return 0
  local pid s exe
  while read -r pid s; do
    [[ $s == "$sid" ]] || continue
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    [[ $exe == "$(getv LAB_KERNEL)" || $exe == /usr/bin/uml_watchdog ]] && echo "$pid"
  done < <(ps -e -o pid=,sid=)
  return 0
}

node_alive() { alive "$(getv "LAB_NODE${1}_PID")" "$(getv "LAB_NODE${1}_START")"; }
holder_alive() { alive "${LAB_HOLDER_PID:-}" "${LAB_HOLDER_START:-}"; }

# SIGKILLs all host processes of node K and waits (10 s at most) until they are gone.
kill_node() {
  local k=$1 pids i
  for ((i = 0; i < 100; i++)); do
    pids=$(node_pids "$k")
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  log "warning: $(node_name "$k"): host processes $(node_pids "$k" | tr '\n' ' ')survived SIGKILL for 10 s"
  return 1
}

node_state() {
  local k=$1
  if ! node_alive "$k"; then echo dead
  elif [[ -e $lab/n$k.frozen ]]; then echo frozen
  else echo running; fi
}


# --- booting nodes ---------------------------------------------------------

# node1..nodeN, and "storage" for number 0: the umid, the hostname, and the
# name of its folder under DIR/shared.
node_name() { if (($1 == 0)); then echo storage; else echo "node$1"; fi; }

# The numbers of every machine of the lab: the storage node (0) first, if any.
all_nodes() {
  local k
  [[ $(getv LAB_STORAGE) == 1 ]] && echo 0
  for ((k = 1; k <= LAB_NODES; k++)); do echo "$k"; done
}

# Has the keeper (lib/keeper, in the lab's network namespace) start argv
# in a session of its own with stdout and stderr to OUT; prints its pid.
keeper_launch() {
  local out=$1 q=$lab/run/keeper id i
  shift
  holder_alive || { log "error: the keeper (pid ${LAB_HOLDER_PID:-?}) is gone"; return 1; }
  id=$(now)-$$-$RANDOM
  printf '%s\0' "$@" >"$q/$id.argv"
  echo "$out" >"$q/$id.out"
  # (A FIFO without its reader would block the open forever.)
  timeout 5 sh -c 'echo "$1" >"$2"' sh "$id" "$q/requests" || { rm -f "$q/$id".*; return 1; }
  for ((i = 0; i < 500; i++)); do
    if [[ -s $q/$id.pid ]]; then
      cat "$q/$id.pid"
      rm -f "$q/$id".*
      return 0
    fi
    sleep 0.01
  done
  rm -f "$q/$id".*
  return 1
}

# Boots machine K in the background (a cluster node wanting M dlm members
# before "ready", or the storage node for K = 0).
boot_node() {
  local k=$1 members=$2 image name
  image=$(getv LAB_ROOTFS)
  name=$(node_name "$k")
  rm -f "$lab/n$k.cow" "$lab/n$k.frozen" "$lab/n$k.cut"
  rm -rf "$lab/run/$name"
  # Keep one generation of a restarted node's logs (nK.console.old, shared/NAME.old/).
  if [[ -d $lab/shared/$name ]]; then
    rm -rf "$lab/shared/$name.old"
    mv "$lab/shared/$name" "$lab/shared/$name.old"
    rm -rf "$lab/shared/$name.old/cmd"
  fi
  mkdir -p "$lab/run" "$lab/shared/$name/cmd"
  [[ -e $lab/n$k.console ]] && mv -f "$lab/n$k.console" "$lab/n$k.console.old"
  # Two wires, UML's mcast transport on the namespace's lo: eth0 the
  # cluster (corosync, DLM), eth1 the storage (iSCSI, NFS). The storage node
  # is on the storage wire only.
  local mac0 mac1 args=()
  mac0=$(printf 'fe:fd:0a:4d:00:%02x' "$k")
  mac1=$(printf 'fe:fd:0a:4e:00:%02x' "$k")
  local wire_storage=eth1=mcast,$mac1,239.192.0.2,1103,1
  if ((k == 0)); then
    args=(ubd1="$lab/storage/nfs.img" "$wire_storage" lk_role=storage
      lk_luns="$(getv LAB_LUNS)" lk_nfs_lease="$(getv LAB_NFS_LEASE)")
    local i=2 spec
    IFS=, read -ra specs <<<"$(getv LAB_LUNS)"
    for spec in "${specs[@]}"; do
      args+=("ubd$i=$lab/storage/lun-${spec%%:*}.img")
      i=$((i + 1))
    done
  else
    args=("eth0=mcast,$mac0,239.192.0.1,1102,1" lk_role=node lk_node="$k" lk_nodes="$LAB_NODES"
      lk_members="$members" lk_storage="$(getv LAB_STORAGE)" lk_sanlock="$(getv LAB_SANLOCK)"
      ${LATCHKEY_LAB_NFS_VERS:+lk_nfs_vers=$LATCHKEY_LAB_NFS_VERS})
    [[ $(getv LAB_STORAGE) == 1 ]] && args+=("$wire_storage")
  fi
  local pid start=
  pid=$(keeper_launch "$lab/n$k.console" "$(getv LAB_KERNEL)" \
    mem="$node_mem" umid="$name" uml_dir="$lab/run" \
    ubd0="$lab/n$k.cow,$image" root=/dev/ubda rw init=/sbin/latchkey-node-init \
    "${args[@]}" con=null con0=null,fd:1 ssl=null lk_shared="$lab/shared") ||
    die "cannot boot $name: the keeper (pid $LAB_HOLDER_PID) did not start it (see $lab/keeper.log)"
  start=$(proc_start "$pid")
  setv "LAB_NODE${k}_BOOTED" "$(date +%s)"  # what `fence` compares a failure time with
  setv "LAB_NODE${k}_PID" "$pid"
  setv "LAB_NODE${k}_START" "$start"
  if ((k == 0)); then
    setv LAB_STORAGE_ADDR "$storage_net.100"
  else
    setv "LAB_NODE${k}_ADDR" "$net.$k"
    [[ $(getv LAB_STORAGE) == 1 ]] && setv "LAB_NODE${k}_STORAGE_ADDR" "$storage_net.$k"
  fi
  save_env
  boot_began[$k]=$(now)
}

# Node S's view of the cluster: `corosync-quorumtool -l`, a line "== dlm",
# then `dlm_tool status`; "" when S does not answer.
cluster_view() {
  local v
  v=$(probe "$1" "$2" sh -c 'corosync-quorumtool -l; echo "== dlm"; dlm_tool status')
  [[ $v == *"== dlm"* ]] && echo "$v"
}
# Whether VIEW's corosync counts node K a member.
corosync_member() { awk -v k="$2" '/^== dlm/ { exit 1 } $1 == k { exit 0 }' <<<"$1"; }

# Waits, up to 40 s, until the surviving nodes are done with node K (just
# killed): their corosync no longer counts it a member, and their
# dlm_controld has fenced it (its "fence" time at or after its "fail"
# time). A node booted again before that is taken for the old one: joining
# in the same membership change as its leave, dlm_controld sees the old
# incarnation merging back with its state ("stateful merge") and has
# corosync kill it; booted before the fence, the fencer may kill the new
# incarnation (the failure and the boot fall in one second). One
# survivor's view is enough: membership is agreed, and fencing told to all.
wait_left() {
  local k=$1 s view deadline=$(($(now) + 40000))
  ((k >= 1)) || return 0
  for s in $(all_nodes); do
    ((s >= 1 && s != k)) || continue
    [[ $(node_state "$s") == running && ! -e $lab/n$s.frozen && ! -e $lab/n$s.cut.cluster ]] || continue
    while (($(now) < deadline)); do
      view=$(cluster_view "$s" 5)
      [[ -n $view ]] || return 0  # no answer: nothing to wait for
      if ! corosync_member "$view" "$k" &&
        awk -v k="$k" '$1 == "node" && $2 == k { found = 1; done = ($3 != "M" && $11 >= $9) }
          END { exit !(!found || done) }' <<<"${view#*== dlm}"; then
        return 0
      fi
      sleep 0.5
    done
    log "warning: $(node_name "$s") is not done with $(node_name "$k") 40 s after its kill:" \
      "$(grep -E "^ +$k |^node $k " <<<"$view" | tr -s ' ' | tr '\n' ';')"
    return 0
  done
}

# The cluster nodes node1's corosync and dlm_controld do not count as
# members, as "corosync:K dlm:K" words; "" when the cluster is whole, "?"
# when node1 does not answer.
missing_members() {
  local view k words=()
  view=$(cluster_view 1 10)
  [[ -n $view ]] || { echo "?"; return; }
  for ((k = 1; k <= LAB_NODES; k++)); do
    corosync_member "$view" "$k" || words+=("corosync:$k")
    grep -q "^node $k M " <<<"${view#*== dlm}" || words+=("dlm:$k")
  done
  echo "${words[*]}"
}

# Prints the tails of machine K's logs (on a failure).
show_node_logs() {
  local k=$1 f name
  name=$(node_name "$k")
  for f in "$lab/n$k.console" "$lab/shared/$name/"{init.log,corosync.log,dlm_controld.log,iscsiadm.log,nfs-mount.log,nfsd.log,wdmd.log,sanlock.log}; do
    [[ -s $f ]] || continue
    printf '%s: ---- %s: last lines of %s ----\n' "$prog" "$name" "$f" >&2
    tail -n 15 "$f" | sed "s/^/$name| /" >&2
  done
  # The host's ptrace wants the whole XSAVE area; a kernel whose FP buffer is
  # smaller dies at init (lab/uml/kernel/xstate.patch sizes it for AMX).
  if grep -q "ptrace set fp regs failed, errno = 14" "$lab/n$k.console" 2>/dev/null; then
    log "$name: the UML kernel's FP register buffer is smaller than this host's XSAVE area" \
      "(EFAULT from PTRACE_SETREGSET); see lab/uml/kernel/xstate.patch"
  fi
}

# Guest uptime of PHASE in STATE-FILE, or "?".
phase_at() { awk -v p="$2" '$2 == p { t = $1 } END { print (t == "" ? "?" : t) }' "$1"; }

# Waits until every machine in $@ wrote "ready" (or failed/died/timed out).
wait_ready() {
  local deadline=$(($(now) + boot_timeout * 1000)) k pending=("$@") left late state name
  while ((${#pending[@]})); do
    left=() late=()
    local expired=0
    (($(now) > deadline)) && expired=1
    for k in "${pending[@]}"; do
      name=$(node_name "$k")
      state=$lab/shared/$name/state
      if [[ -f $state ]] && grep -q '^[0-9.]* ready' "$state"; then
        local ms=$(($(now) - boot_began[$k])) detail
        if ((k == 0)); then
          detail="storage served at $(phase_at "$state" storage-ready) s"
        else
          detail="corosync quorate at $(phase_at "$state" corosync-quorate) s, dlm ready at $(phase_at "$state" dlm-ready) s"
          [[ $(getv LAB_STORAGE) == 1 ]] && detail+=", storage attached at $(phase_at "$state" storage-attached) s"
          [[ $(getv LAB_SANLOCK) == 1 ]] && detail+=", sanlock ready at $(phase_at "$state" sanlock-ready) s"
        fi
        log "$name ready after $(secs "$ms") s (guest uptime: $detail)"
      elif [[ -f $state ]] && grep -q ' failed' "$state"; then
        log "error: $name failed to boot: $(grep ' failed' "$state" | tail -n 1 | cut -d' ' -f3-)"
        show_node_logs "$k"
        return 1
      elif ! node_alive "$k"; then
        log "error: $name: its UML process (pid $(getv "LAB_NODE${k}_PID")) exited during boot"
        show_node_logs "$k"
        return 1
      elif ((expired)); then
        late+=("$k")
      else
        left+=("$k")
      fi
    done
    if ((${#late[@]})); then
      for k in "${late[@]}"; do
        name=$(node_name "$k")
        state=$lab/shared/$name/state
        log "error: $name not ready after $boot_timeout s (last phase: $(tail -n 1 "$state" 2>/dev/null || echo 'none, node-init never reported'))"
        show_node_logs "$k"
      done
      return 1
    fi
    pending=("${left[@]}")
    ((${#pending[@]})) && sleep 0.1
  done
  return 0
}

# --- teardown --------------------------------------------------------------

teardown() {
  local k halted=() machines
  machines=$(all_nodes)
  for k in $machines; do
    if node_alive "$k" && holder_alive && [[ ! -e $lab/n$k.frozen ]]; then
      (timeout 2 nsenter -t "$LAB_HOLDER_PID" -n -- uml_mconsole "$lab/run/$(node_name "$k")/mconsole" halt >/dev/null 2>&1 || true) &
      halted+=($!)
    fi
  done
  ((${#halted[@]})) && wait "${halted[@]}" 2>/dev/null
  stop_fencer
  for k in $machines; do kill_node "$k" || true; done
  if holder_alive; then
    kill -KILL "$LAB_HOLDER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
      [[ -n $(proc_start "$LAB_HOLDER_PID") ]] || break
      sleep 0.1
    done
    holder_alive && log "warning: namespace holder pid $LAB_HOLDER_PID survived SIGKILL"
  fi
  rm -f "$lab"/n*.cow "$lab"/n*.frozen "$lab"/n*.cut "$lab/rootfs.img" "$lab/linux"
  rm -rf "$lab/run" "$lab/storage"
  if [[ -f $lab/lab.env ]]; then
    setv LAB_STATE stopped
    save_env
  fi
}
