# shellcheck shell=bash
# latchkey UML lab, guest side: the storage node (lk_role=storage).
# Sourced by node-init from /shared/lab/; uses its helpers (say, phase, hang,
# nap) and variables (out).
#
# The storage node is on the storage wire only (eth1, $storage_addr), is no
# corosync member, and serves:
#   - iSCSI: the kernel's LIO target, configured through configfs (no
#     userspace tool): one iblock backstore per LUN on /dev/ubdc, /dev/ubdd,
#     ... (host files DIR/storage/lun-NAME.img), all exported as LUNs 0.. of
#     one target $storage_iqn on $storage_addr:3260, any initiator admitted
#     (dynamic ACLs), SCSI-3 persistent reservations as LIO keeps them. Each
#     LUN's unit serial is derived from its name, so its WWN (naa.6001405...)
#     is the same after a storage restart.
#   - NFSv4: /srv/nfs (an ext4 file system on /dev/ubdb, host file
#     DIR/storage/nfs.img) exported to the storage wire (clients mount
#     ADDR:/srv/nfs), with lease and grace time lk_nfs_lease seconds, and
#     the directory latchkey-sanlock in it for sanlock's automatic leases.
#
# Kernel command line words (from the host's uml-cluster):
#   lk_luns=NAME:MIB:SECTOR,...  the LUNs, in ubd order (SECTOR 512 or 4096)
#   lk_nfs_lease=S         NFSv4 lease and grace time (seconds)
#
# Writes /shared/storage/luns: "LUN-NUMBER NAME MIB SERIAL" per LUN.

storage_iqn=iqn.2026-12.org.latchkey.lab:storage

storage_setup() {
  echo "127.0.0.1 localhost" >/etc/hosts
  storage_nfs
  storage_iscsi
  phase storage-ready "luns ${lk_luns:-none}, nfs lease ${lk_nfs_lease:-10} s"
}

storage_nfs() {
  mkdir -p /srv/nfs
  mount -t ext4 /dev/ubdb /srv/nfs || hang "cannot mount the NFS export's file system (/dev/ubdb)"
  chmod 1777 /srv/nfs
  # sanlock's automatic lease files (lab/examples/latchd-sanlock.conf's
  # sanlock_lease_dir): the backend never creates lease_dir itself.
  mkdir -p /srv/nfs/latchkey-sanlock
  mount -t nfsd nfsd /proc/fs/nfsd || hang "cannot mount the nfsd file system"
  local lease=${lk_nfs_lease:-10}
  echo "$lease" >/proc/fs/nfsd/nfsv4leasetime || hang "cannot set the NFSv4 lease time to $lease s"
  echo "$lease" >/proc/fs/nfsd/nfsv4gracetime || hang "cannot set the NFSv4 grace time to $lease s"
  mkdir -p /var/lib/nfs/v4recovery /run/rpc_pipefs
  # No fsid=0: mountd builds the NFSv4 pseudo root itself (with fsid=0 it
  # crashed here, bookworm's nfs-utils 2.6.2); clients mount ADDR:/srv/nfs.
  echo "/srv/nfs $storage_net.0/24(rw,sync,no_root_squash,no_subtree_check)" >/etc/exports
  # NFSv4 only: no rpcbind, no statd, no lockd.
  exportfs -ra >>"$out/nfsd.log" 2>&1 || hang "exportfs failed (see $out/nfsd.log)"
  rpc.mountd -N 3 --no-udp </dev/null >>"$out/nfsd.log" 2>&1 ||
    hang "rpc.mountd failed (see $out/nfsd.log)"
  rpc.nfsd -N 3 --no-udp 8 </dev/null >>"$out/nfsd.log" 2>&1 ||
    hang "rpc.nfsd failed (see $out/nfsd.log)"
  say "nfsd serving /srv/nfs (NFSv4, lease $lease s)"
}

storage_iscsi() {
  local t=/sys/kernel/config/target
  [[ -d $t/core ]] || hang "no LIO target in configfs ($t/core): kernel without CONFIG_TARGET_CORE?"
  # LIO writes each LUN's persistent-reservation state here at every PR
  # OUT; without it REGISTER fails with NOT READY.
  mkdir -p /var/target/pr /var/target/alua
  local tpg=$t/iscsi/$storage_iqn/tpgt_1
  mkdir -p "$tpg" || hang "cannot create the iSCSI target $storage_iqn (CONFIG_ISCSI_TARGET?)"
  : >/shared/storage/luns.tmp
  local spec name mib sector i=0 dev serial letters=cdefghijklmnop
  IFS=, read -ra specs <<<"${lk_luns:-}"
  for spec in "${specs[@]}"; do
    IFS=: read -r name mib sector <<<"$spec"
    sector=${sector:-512}
    dev=/dev/ubd${letters:i:1}
    [[ -b $dev ]] || hang "LUN $name: no block device $dev"
    serial=$(printf 'latchkey-lab-lun %s' "$name" | sha256sum | cut -c1-32)
    local so=$t/core/iblock_$i/$name
    mkdir -p "$so" || hang "LUN $name: cannot create the backstore $so"
    echo "udev_path=$dev" >"$so/control"
    echo "$serial" >"$so/wwn/vpd_unit_serial" || hang "LUN $name: cannot set its unit serial"
    echo 1 >"$so/enable" || hang "LUN $name: cannot enable the backstore on $dev"
    # The logical block size the initiators see (LIO translates to the
    # 512-byte ubd device), set before the LUN is exported.
    echo "$sector" >"$so/attrib/block_size" ||
      hang "LUN $name: cannot set its block size to $sector"
    mkdir -p "$tpg/lun/lun_$i" || hang "LUN $name: cannot create lun_$i"
    ln -s "$so" "$tpg/lun/lun_$i/$name" || hang "LUN $name: cannot map the backstore to lun_$i"
    echo "$i $name $mib $serial" >>/shared/storage/luns.tmp
    i=$((i + 1))
  done
  echo 0 >"$tpg/attrib/authentication"
  echo 1 >"$tpg/attrib/generate_node_acls"
  echo 1 >"$tpg/attrib/cache_dynamic_acls"
  echo 0 >"$tpg/attrib/demo_mode_write_protect"
  mkdir -p "$tpg/np/$storage_addr:3260" || hang "cannot listen on $storage_addr:3260"
  echo 1 >"$tpg/enable" || hang "cannot enable the iSCSI target portal group"
  mv /shared/storage/luns.tmp /shared/storage/luns
  say "iSCSI target $storage_iqn on $storage_addr:3260 with $i LUN(s)"
}
