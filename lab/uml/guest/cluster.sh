# shellcheck shell=bash
# latchkey UML lab, guest side: a cluster node's corosync and DLM.
# Sourced by node-init (lk_role=node) from /shared/lab/; uses its helpers
# (say, phase, hang, nap) and variables (node, nodes, members, out).
#
# cluster_setup    writes /etc/hosts, corosync.conf and dlm.conf (fencing
#                  through fence-agent and the host's fencer)
# cluster_bringup  starts corosync, waits for quorum, starts dlm_controld,
#                  waits until the DLM has `members` members; records the
#                  phases corosync-quorate and dlm-ready

cluster_setup() {
  mkdir -p /etc/corosync /etc/dlm /var/log/corosync /var/log/dlm_controld
  {
    echo "totem {"
    echo "    version: 2"
    echo "    cluster_name: latchkey"
    echo "    transport: knet"
    echo "    crypto_cipher: none"
    echo "    crypto_hash: none"
    echo "    token: 3000"
    echo "}"
    echo "nodelist {"
    local k
    for ((k = 1; k <= nodes; k++)); do
      echo "    node {"
      echo "        name: node$k"
      echo "        nodeid: $k"
      echo "        ring0_addr: $cluster_net.$k"
      echo "    }"
    done
    echo "}"
    echo "quorum {"
    echo "    provider: corosync_votequorum"
    ((nodes == 2)) && echo "    two_node: 1"
    echo "}"
    echo "logging {"
    echo "    to_logfile: yes"
    echo "    logfile: /var/log/corosync/corosync.log"
    echo "    to_stderr: no"
    echo "    to_syslog: no"
    echo "    timestamp: hires"
    echo "}"
  } >/etc/corosync/corosync.conf
  # Fencing through the lab's agent (fence-agent): a failed node's locks
  # are recovered only once the host has killed it. No startup fencing:
  # nodes boot seconds apart and each one joins by itself. dlm_controld
  # holds every fence back until post_join_delay has passed since the last
  # node joined (default 30 s: measured, a node cut 3 s after the lab
  # started was fenced 27 s later); the lab restarts nodes all the time.
  printf '%s\n' protocol=tcp enable_fencing=1 enable_startup_fencing=0 post_join_delay=3 \
    'fence_all /shared/lab/fence-agent' >/etc/dlm/dlm.conf
  ln -sfn "$out/corosync.log" /var/log/corosync/corosync.log
  ln -sfn "$out/dlm_controld.log" /var/log/dlm_controld/dlm_controld.log
}

# A daemon that exits during bring-up (another node's dlm_controld kicks a
# member it takes for an old incarnation: corosync logs "Killed by node N")
# never comes back: fail the boot with its last words instead of waiting.
cluster_daemon_alive() {
  kill -0 "$2" 2>/dev/null && return 0
  hang "$1 exited during bring-up: $(grep -v '^$' "$3" 2>/dev/null | tail -n 2 | tr '\n' ' ')"
}

cluster_bringup() {
  say "starting corosync"
  corosync -f </dev/null >>"$out/corosync.out" 2>&1 &
  local i corosync_pid=$!
  for ((i = 0; ; i++)); do
    corosync-quorumtool -s 2>/dev/null | grep -q '^Quorate: *Yes' && break
    cluster_daemon_alive corosync "$corosync_pid" "$out/corosync.log"
    ((i % 40 == 39)) && say "still waiting for corosync quorum"
    nap 0.25
  done
  phase corosync-quorate
  say "starting dlm_controld"
  dlm_controld -D </dev/null >>"$out/dlm_controld.log" 2>&1 &
  local status count dlm_pid=$!
  for ((i = 0; ; i++)); do
    cluster_daemon_alive corosync "$corosync_pid" "$out/corosync.log"
    cluster_daemon_alive dlm_controld "$dlm_pid" "$out/dlm_controld.log"
    status=$(dlm_tool status 2>/dev/null)
    if [[ $status == *"quorate 1"* ]]; then
      count=$(grep -c '^node [0-9]* M ' <<<"$status")
      ((count >= members)) && break
    fi
    ((i % 40 == 39)) && say "still waiting for dlm_controld (members wanted: $members)"
    nap 0.25
  done
  phase dlm-ready "dlm members $count"
}
