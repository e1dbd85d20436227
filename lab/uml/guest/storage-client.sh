# shellcheck shell=bash
# latchkey UML lab, guest side: a cluster node's view of the shared storage.
# Sourced by node-init (lk_role=node, lk_storage=1) from /shared/lab/; uses
# its helpers (say, phase, nap) and variables (node, out).
#
# client_bringup   iscsid, login to the storage node's target, stable LUN
#                  paths, the NFS mount; records the phase storage-attached
#
# Stable paths (the nodes have no udev): /dev/lab/NAME -> /dev/sdX, where
# the LUN number of sdX (its SCSI address H:C:T:L) is NAME's number in
# /shared/storage/luns, and /dev/lab/by-wwn/WWID likewise. The node writes
# "NAME WWID /dev/sdX" per LUN to /shared/nodeK/luns; the host checks that
# every node sees the same WWID for each NAME.
#
# iSCSI timeouts are short (lab, not production): a session whose storage
# wire is gone fails its I/O after lk_iscsi_replacement seconds (default 10).
# The NFS export is mounted at /mnt/nfs (NFSv4.2, or lk_nfs_vers; hard, timeo 10 s).

client_iqn() { echo "iqn.2026-12.org.latchkey.lab:node$node"; }

client_bringup() {
  local i t0
  read -r t0 _ </proc/uptime
  mkdir -p /etc/iscsi /run/lock/iscsi /dev/lab/by-wwn /mnt/nfs
  echo "InitiatorName=$(client_iqn)" >/etc/iscsi/initiatorname.iscsi
  local rt=${lk_iscsi_replacement:-10}
  sed -i -e "s/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = $rt/" \
    -e 's/^node.conn\[0\].timeo.noop_out_interval = .*/node.conn[0].timeo.noop_out_interval = 2/' \
    -e 's/^node.conn\[0\].timeo.noop_out_timeout = .*/node.conn[0].timeo.noop_out_timeout = 2/' \
    /etc/iscsi/iscsid.conf
  iscsid -f </dev/null >>"$out/iscsid.log" 2>&1 &
  # The storage node boots beside us: wait for its portal and its LUN list.
  for ((i = 0; ; i++)); do
    [[ -s /shared/storage/luns ]] &&
      iscsiadm -m discovery -t sendtargets -p "$storage_addr" >>"$out/iscsiadm.log" 2>&1 && break
    ((i % 20 == 19)) && say "still waiting for the storage node's iSCSI portal $storage_addr:3260"
    nap 0.5
  done
  iscsiadm -m node -p "$storage_addr" --login >>"$out/iscsiadm.log" 2>&1 ||
    { phase failed "iSCSI login to $storage_addr failed (see $out/iscsiadm.log)"; return 1; }
  local want have name lun mib serial
  want=$(grep -c . /shared/storage/luns)
  : >"$out/luns.tmp"
  for ((i = 0; ; i++)); do
    have=0
    : >"$out/luns.tmp"
    while read -r lun name mib serial; do
      local dev=
      for d in /sys/class/scsi_disk/*:*:*:"$lun"; do
        [[ -d $d/device/block ]] || continue
        dev=$(ls "$d/device/block")
      done
      [[ -n $dev && -b /dev/$dev ]] || continue
      local wwid
      wwid=$(cat "/sys/block/$dev/device/wwid" 2>/dev/null) || continue
      ln -sfn "/dev/$dev" "/dev/lab/$name"
      ln -sfn "/dev/$dev" "/dev/lab/by-wwn/${wwid// /_}"
      echo "$name ${wwid// /_} /dev/$dev" >>"$out/luns.tmp"
      have=$((have + 1))
    done </shared/storage/luns
    ((have == want)) && break
    ((i % 20 == 19)) && say "still waiting for LUNs: $have of $want appeared"
    nap 0.25
  done
  mv "$out/luns.tmp" "$out/luns"
  local vers=${lk_nfs_vers:-4.2}
  for ((i = 0; ; i++)); do
    mount -t nfs4 -o "vers=$vers,hard,timeo=100" "$storage_addr:/srv/nfs" /mnt/nfs >>"$out/nfs-mount.log" 2>&1 && break
    if ((i == 120)); then
      phase failed "cannot mount $storage_addr:/srv/nfs (NFS $vers) after 60 s: $(tail -n 1 "$out/nfs-mount.log")"
      return 1
    fi
    ((i % 20 == 19)) && say "still trying to mount $storage_addr:/srv/nfs (see $out/nfs-mount.log)"
    nap 0.5
  done
  local t1
  read -r t1 _ </proc/uptime
  phase storage-attached "$want LUN(s) under /dev/lab, NFS on /mnt/nfs, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}
