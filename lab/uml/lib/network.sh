# shellcheck shell=bash
# uml-cluster's network faults (sourced). Every node is on the cluster wire
# (eth0, 10.77.0.K) and, in a lab with storage, on the storage wire (eth1,
# 10.78.0.K; the storage node is 10.78.0.100). Faults act inside the nodes
# (ip, nft, tc), so each can hit one wire and leave the other alone:
#
#   cut/heal NODE [--wire cluster|storage|both]   the interface down / up
#   partition DIR SIDE SIDE ...   cluster-wire drops between the sides
#     (comma-separated node lists); every side still reaches the storage
#   unpartition DIR               removes every partition rule
#   netem NODE [--wire W] SPEC... tc netem on the node's interface (egress):
#     delay 100ms [20ms], loss 5%, ... ; "netem NODE --clear" removes it
#
# The rules live in an nft table "latchkey_lab" of the node; the markers
# DIR/nK.cut.WIRE and DIR/nK.netem.WIRE record what is in force, for
# `status`.

wire_dev() {
  case $1 in
    cluster) echo eth0 ;;
    storage) echo eth1 ;;
    *) return 1 ;;
  esac
}

# Parses --wire W (default $2) from "$@" of a command; sets `wires`.
parse_wire() {
  local cmd=$1 default=$2
  local w=$default
  shift 2
  rest=()
  while (($#)); do
    case $1 in
      --wire) w=${2:-}; shift 2 || die "$cmd: --wire needs cluster, storage or both" ;;
      --wire=*) w=${1#--wire=}; shift ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  case $w in
    cluster) wires=(cluster) ;;
    storage) wires=(storage) ;;
    both) wires=(cluster storage) ;;
    *) die "$cmd: --wire must be cluster, storage or both, not '$w'" ;;
  esac
  if [[ " ${wires[*]} " == *" storage "* && $(getv LAB_STORAGE) != 1 ]]; then
    die "$cmd: $lab has no storage wire (start the lab with --storage)"
  fi
}

# Runs a short command in node K that must succeed, or dies naming it.
node_must() {
  local what=$1 k=$2
  shift 2
  channel_run "$k" 20 "$@" || die "$what: '$*' on $(node_name "$k") failed"
  ((run_rc == 0)) || die "$what: '$*' on $(node_name "$k") exited $run_rc"
}

# For CMD DIR NODE [--wire W] REST...: loads the lab and sets `k` (the
# machine), `wires` (default: its cluster wire; the storage node's storage
# wire) and `rest`.
machine_and_wires() {
  local what=$1
  set_lab "${2:-}"
  (($# >= 3)) || usage
  load_env || exit 1
  k=$(node_num "$3") || exit 1
  local default=cluster
  ((k == 0)) && default=storage
  parse_wire "$what" "$default" "${@:4}"
  if ((k == 0)) && [[ " ${wires[*]} " == *" cluster "* ]]; then
    die "$what: the storage node is not on the cluster wire"
  fi
}

cmd_cut_heal() {
  local what=$1 k
  shift
  machine_and_wires "$what" "$@"
  ((${#rest[@]} == 0)) || die "$what: unexpected argument '${rest[0]}'"
  [[ $(node_state "$k") == running ]] || die "$what: $(node_name "$k") is $(node_state "$k")"
  local updown=down w
  [[ $what == heal ]] && updown=up
  for w in "${wires[@]}"; do
    node_must "$what" "$k" ip link set "$(wire_dev "$w")" "$updown"
    if [[ $what == cut ]]; then touch "$lab/n$k.cut.$w"; else rm -f "$lab/n$k.cut.$w"; fi
    event_log "$what" "$(node_name "$k")" "wire=$w"
  done
}

# The nft script that makes node K drop cluster-wire traffic with `peers`.
partition_rules() {
  local peers=$1
  cat <<EOF
table ip latchkey_lab
delete table ip latchkey_lab
table ip latchkey_lab {
  chain in { type filter hook input priority 0; policy accept; iifname "eth0" ip saddr { $peers } drop; }
  chain out { type filter hook output priority 0; policy accept; oifname "eth0" ip daddr { $peers } drop; }
}
EOF
}

cmd_partition() {
  set_lab "${1:-}"
  (($# >= 3)) || usage
  load_env || exit 1
  shift
  local -A side_of=()
  local side=0 spec n k names=()
  for spec in "$@"; do
    side=$((side + 1))
    IFS=, read -ra members <<<"$spec"
    ((${#members[@]})) || die "partition: empty side '$spec'"
    for n in "${members[@]}"; do
      k=$(cluster_node_num partition "$n") || exit 1
      [[ -z ${side_of[$k]:-} ]] || die "partition: node$k is on two sides"
      side_of[$k]=$side
    done
  done
  for ((k = 1; k <= LAB_NODES; k++)); do
    [[ -n ${side_of[$k]:-} ]] || die "partition: node$k is on no side (name every node once)"
  done
  for ((k = 1; k <= LAB_NODES; k++)); do
    [[ $(node_state "$k") == running ]] || die "partition: node$k is $(node_state "$k")"
  done
  local j peers
  for ((k = 1; k <= LAB_NODES; k++)); do
    peers=()
    for ((j = 1; j <= LAB_NODES; j++)); do
      [[ ${side_of[$j]} != "${side_of[$k]}" ]] && peers+=("$net.$j")
    done
    partition_rules "$(IFS=,; echo "${peers[*]}")" >"$lab/shared/node$k/partition.nft"
    node_must partition "$k" nft -f "/shared/node$k/partition.nft"
  done
  for spec in "$@"; do names+=("$spec"); done
  echo "$*" >"$lab/partition"
  event_log partition "$(IFS='|'; echo "${names[*]}")"
}

cmd_unpartition() {
  set_lab "${1:-}"
  (($# == 1)) || usage
  load_env || exit 1
  local k
  for ((k = 1; k <= LAB_NODES; k++)); do
    [[ $(node_state "$k") == running ]] || { log "unpartition: node$k is $(node_state "$k"): skipped"; continue; }
    channel_run "$k" 20 sh -c 'nft list table ip latchkey_lab >/dev/null 2>&1 || exit 0; nft delete table ip latchkey_lab' ||
      die "unpartition: removing the rules on node$k failed"
    ((run_rc == 0)) || die "unpartition: removing the rules on node$k exited $run_rc"
  done
  rm -f "$lab/partition"
  event_log unpartition all
}

cmd_netem() {
  local k
  machine_and_wires netem "$@"
  ((${#wires[@]} == 1)) || die "netem: name one wire"
  ((${#rest[@]})) || die "netem: give a netem spec (e.g. delay 100ms 20ms loss 5%) or --clear"
  [[ $(node_state "$k") == running ]] || die "netem: $(node_name "$k") is $(node_state "$k")"
  local dev w=${wires[0]}
  dev=$(wire_dev "$w")
  if [[ ${rest[0]} == --clear ]]; then
    ((${#rest[@]} == 1)) || die "netem: --clear takes no spec"
    channel_run "$k" 20 sh -c "tc qdisc del dev $dev root 2>/dev/null; exit 0" || die "netem: clearing $dev failed"
    rm -f "$lab/n$k.netem.$w"
    event_log netem-clear "$(node_name "$k")" "wire=$w"
    return 0
  fi
  local a
  for a in "${rest[@]}"; do
    [[ $a =~ ^[A-Za-z0-9.%]+$ ]] || die "netem: '$a' is not a netem word (letters, digits, '.', '%')"
  done
  node_must netem "$k" tc qdisc replace dev "$dev" root netem "${rest[@]}"
  echo "${rest[*]}" >"$lab/n$k.netem.$w"
  event_log netem "$(node_name "$k")" "wire=$w" "spec=$(IFS=_; echo "${rest[*]}")"
}
