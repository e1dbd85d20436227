# shellcheck shell=bash
# uml-cluster's event log (sourced): DIR/events.log, one line per lab event
# that changes what the nodes see, appended when the change has taken effect:
#
#   <unix ms> <event> <target> [key=value ...]
#
# e.g. "1796570123456 partition node1,node2|node3" or
# "1796570130001 netem node2 wire=cluster delay=100ms". Events: start,
# stop, boot, kill, freeze, thaw, cut, heal, partition, unpartition, netem,
# netem-clear, storage-stall, storage-resume, storage-errors,
# storage-errors-clear, daemon-kill, nfs-restart, clock-jump, fence,
# fencing, reset (docs/lab.md).
# Lines are whole (one write each, under O_APPEND), so concurrent commands
# never interleave within a line. Benchmarks and the safety checker read it
# to line their own records up with the faults.

# Appends one event: event_log EVENT TARGET [key=value ...].
event_log() {
  local line
  line="$(now) $*"
  printf '%s\n' "$line" >>"$lab/events.log" || log "warning: cannot append to $lab/events.log: $line"
}
