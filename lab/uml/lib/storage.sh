# shellcheck shell=bash
# uml-cluster's shared storage, host side (sourced). With `start --storage`
# the lab gets a storage node (guest side: lab/uml/guest/storage.sh) whose
# disks are host files under DIR/storage/:
#   nfs.img         ext4, the NFSv4 export (/srv/nfs), 1 GiB sparse
#   lun-NAME.img    one per LUN (--lun NAME:MIB[:SECTOR]), sparse, exported over
#                   iSCSI with 512-byte (default) or 4096-byte logical sectors
# The cluster nodes log in to every LUN and mount the export
# (guest/storage-client.sh).

default_luns=lease:256,vm:1024,gfs:256,lease4k:1024:4096
default_nfs_lease=10

# Checks a --lun list "NAME:MIB[:SECTOR],..." and prints it normalized
# (NAME:MIB:SECTOR).
check_luns() {
  local list=$1 spec name mib sector out=() seen=" "
  IFS=, read -ra specs <<<"$list"
  ((${#specs[@]} >= 1 && ${#specs[@]} <= 12)) || die "start: give 1 to 12 LUNs, not '$list'"
  for spec in "${specs[@]}"; do
    [[ $spec =~ ^([a-z][a-z0-9-]{0,15}):([0-9]{1,6})(:([0-9]{1,5}))?$ ]] ||
      die "start: LUN '$spec' must be NAME:MIB[:SECTOR] (NAME: a lowercase letter, then up to 15 of [a-z0-9-])"
    name=${BASH_REMATCH[1]} mib=${BASH_REMATCH[2]} sector=${BASH_REMATCH[4]:-512}
    [[ $sector == 512 || $sector == 4096 ]] ||
      die "start: LUN $name: sector size $sector is not 512 or 4096"
    ((mib >= 16 && mib <= 65536)) || die "start: LUN $name: size $mib MiB is not within 16..65536"
    [[ $seen != *" $name "* ]] || die "start: LUN name '$name' given twice"
    seen+="$name "
    out+=("$name:$mib:$sector")
  done
  (IFS=,; echo "${out[*]}")
}

# Creates DIR/storage with the export's file system and the LUN files.
make_storage() {
  local luns=$1 spec name mib
  mkdir -p "$lab/storage" || die "cannot create $lab/storage"
  truncate -s 1G "$lab/storage/nfs.img" || die "cannot create $lab/storage/nfs.img"
  mke2fs -q -F -t ext4 -L latchkey-nfs -m 0 "$lab/storage/nfs.img" >/dev/null 2>&1 ||
    die "mke2fs of $lab/storage/nfs.img failed"
  IFS=, read -ra specs <<<"$luns"
  for spec in "${specs[@]}"; do
    IFS=: read -r name mib _ <<<"$spec"
    truncate -s "${mib}M" "$lab/storage/lun-$name.img" ||
      die "cannot create $lab/storage/lun-${spec%%:*}.img"
  done
}

# After boot: every node must see each LUN under the same WWID. Records
# LAB_LUN_<NAME>_WWID; dies naming the node and LUN that differ.
check_lun_views() {
  local k name wwid dev first
  declare -A wwid_of=()
  for ((k = 1; k <= LAB_NODES; k++)); do
    [[ -s $lab/shared/node$k/luns ]] || die "node$k reported no LUNs ($lab/shared/node$k/luns is empty)"
    while read -r name wwid dev; do
      first=${wwid_of[$name]:-}
      if [[ -z $first ]]; then
        wwid_of[$name]=$wwid
      elif [[ $first != "$wwid" ]]; then
        die "LUN $name has WWID $wwid on node$k but $first on node1"
      fi
    done <"$lab/shared/node$k/luns"
  done
  for name in "${!wwid_of[@]}"; do setv "LAB_LUN_${name//-/_}_WWID" "${wwid_of[$name]}"; done
  save_env
}
