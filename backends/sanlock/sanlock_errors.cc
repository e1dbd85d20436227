#include "backends/sanlock/sanlock_errors.h"

#include <errno.h>
#include <string.h>

#include "absl/strings/str_cat.h"

extern "C" {
#include <sanlock_rv.h>
}

namespace latchkey {
namespace sanlockbe {

std::vector<int> AllSanlockCodes() {
  return {SANLK_ERROR,           SANLK_AIO_TIMEOUT,      SANLK_WD_ERROR,
          SANLK_DBLOCK_READ,     SANLK_DBLOCK_WRITE,     SANLK_DBLOCK_LVER,
          SANLK_DBLOCK_MBAL,     SANLK_DBLOCK_CHECKSUM,  SANLK_LEADER_READ,
          SANLK_LEADER_WRITE,    SANLK_LEADER_DIFF,      SANLK_LEADER_MAGIC,
          SANLK_LEADER_VERSION,  SANLK_LEADER_SECTORSIZE, SANLK_LEADER_LOCKSPACE,
          SANLK_LEADER_RESOURCE, SANLK_LEADER_NUMHOSTS,  SANLK_LEADER_CHECKSUM,
          SANLK_ADDLS_SIZES,     SANLK_ADDLS_INVALID_HOSTID, SANLK_ACQUIRE_LVER,
          SANLK_ACQUIRE_LOCKSPACE, SANLK_ACQUIRE_IDDISK, SANLK_ACQUIRE_IDLIVE,
          SANLK_ACQUIRE_OWNED,   SANLK_ACQUIRE_OTHER,    SANLK_ACQUIRE_SHRETRY,
          SANLK_ACQUIRE_OWNED_RETRY, SANLK_RELEASE_LVER, SANLK_RELEASE_OWNER,
          SANLK_RENEW_OWNER,     SANLK_RENEW_DIFF,       SANLK_HOSTID_BUSY,
          SANLK_REQUEST_MAGIC,   SANLK_REQUEST_VERSION,  SANLK_REQUEST_OLD,
          SANLK_REQUEST_LVER,    SANLK_RINDEX_MAGIC,     SANLK_RINDEX_VERSION,
          SANLK_RINDEX_LOCKSPACE, SANLK_RINDEX_OFFSET,   SANLK_RINDEX_DIFF};
}

std::string RvText(int rv) {
  // The storage could not be read or written the way sanlock needs.
  constexpr const char* kStorage =
      "; check the storage path, that every host sees the same device, and that the lease's "
      "sector size matches the device's (a 512-byte lease on 4096-byte storage fails like this)";
  switch (rv) {
    case -ENOENT: return "no such object (-ENOENT)";
    case -ECONNREFUSED: return "the sanlock daemon is not running (-ECONNREFUSED); start it";
    case -ENOSPC: return "the lockspace is not joined or is failing (-ENOSPC)";
    case -EEXIST: return "held by another process on this host (-EEXIST)";
    case -EAGAIN: return "held shared by other hosts (-EAGAIN)";
    case -EBUSY: return "busy (-EBUSY)";
    case -EUCLEAN: return "an orphan lease left on this host by a stopped holder (-EUCLEAN)";
    case -EMSGSIZE:
      return "the lease area reaches beyond the end of its file or device (-EMSGSIZE): sanlock "
             "reads a lease with its lockspace's alignment (8 MiB on 4096-byte sectors), so the "
             "storage must be at least offset + alignment long";
    case -EINVAL: return "invalid (-EINVAL)";
    case -EINPROGRESS: return "the lockspace is being added or removed (-EINPROGRESS); retry";
    case -ETIMEDOUT: return "timed out (-ETIMEDOUT)";
    case -ENODEV: return "the lease storage is not there (-ENODEV)";
    case -EIO: return "an I/O error on the lease storage (-EIO)";
    case -EPERM: return "not permitted (-EPERM)";
    case -EACCES: return "the daemon may not open the lease storage (-EACCES); check its owner and mode";
    case SANLK_ERROR: return "sanlock failed without saying why (SANLK_ERROR); see sanlock's log";
    case SANLK_AIO_TIMEOUT:
      return "the lease storage did not answer within io_timeout (SANLK_AIO_TIMEOUT)";
    case SANLK_WD_ERROR:
      return "the watchdog is not available (SANLK_WD_ERROR); start wdmd, or run sanlock "
             "without the watchdog (-w 0) in a test lab";
    case SANLK_DBLOCK_READ:
      return absl::StrCat("reading a ballot block failed (SANLK_DBLOCK_READ)", kStorage);
    case SANLK_DBLOCK_WRITE:
      return absl::StrCat("writing a ballot block failed (SANLK_DBLOCK_WRITE)", kStorage);
    case SANLK_DBLOCK_LVER:
      return "a ballot block has a newer lease version: another host acquired it "
             "(SANLK_DBLOCK_LVER); retry";
    case SANLK_DBLOCK_MBAL:
      return "another host ran a higher ballot at the same time (SANLK_DBLOCK_MBAL); retry";
    case SANLK_DBLOCK_CHECKSUM:
      return "a ballot block has a bad checksum (SANLK_DBLOCK_CHECKSUM): the lease was "
             "overwritten by something else";
    case SANLK_LEADER_READ:
      return absl::StrCat("reading the lease leader failed (SANLK_LEADER_READ)", kStorage);
    case SANLK_LEADER_WRITE:
      return absl::StrCat("writing the lease leader failed (SANLK_LEADER_WRITE)", kStorage);
    case SANLK_LEADER_DIFF:
      return "the copies of the leader differ between the lease's disks (SANLK_LEADER_DIFF)";
    case SANLK_LEADER_MAGIC:
      return "no sanlock lease at that place (SANLK_LEADER_MAGIC): it was never initialised, "
             "or was overwritten";
    case SANLK_LEADER_VERSION:
      return "the lease was written by an incompatible sanlock version (SANLK_LEADER_VERSION)";
    case SANLK_LEADER_SECTORSIZE:
      return "the lease's sector size is not the one asked for (SANLK_LEADER_SECTORSIZE); the "
             "lease and its storage or lockspace disagree on 512 vs 4096 bytes";
    case SANLK_LEADER_LOCKSPACE:
      return "the lease belongs to another lockspace (SANLK_LEADER_LOCKSPACE)";
    case SANLK_LEADER_RESOURCE:
      return "the lease there has another name (SANLK_LEADER_RESOURCE)";
    case SANLK_LEADER_NUMHOSTS:
      return "host_id beyond the lease's host count (SANLK_LEADER_NUMHOSTS); re-initialise the "
             "lease with more hosts (num_hosts), or use a lower host_id";
    case SANLK_LEADER_CHECKSUM:
      return "the lease leader has a bad checksum (SANLK_LEADER_CHECKSUM): something else wrote "
             "over it";
    case SANLK_ADDLS_SIZES:
      return "the lockspace's sector size and alignment are not a pair sanlock supports "
             "(SANLK_ADDLS_SIZES): 512 with 1 MiB, or 4096 with 1, 2, 4 or 8 MiB";
    case SANLK_ADDLS_INVALID_HOSTID:
      return "host_id out of range for this lockspace (SANLK_ADDLS_INVALID_HOSTID): 1..2000 "
             "(1..250 on 4096-byte sectors with 1 MiB alignment)";
    case SANLK_ACQUIRE_LVER: return "the lease version moved (SANLK_ACQUIRE_LVER)";
    case SANLK_ACQUIRE_LOCKSPACE:
      return "the lease's lockspace is not joined on this host (SANLK_ACQUIRE_LOCKSPACE)";
    case SANLK_ACQUIRE_IDDISK:
      return "the holder's host lease could not be read (SANLK_ACQUIRE_IDDISK); check the "
             "lockspace storage";
    case SANLK_ACQUIRE_IDLIVE: return "held by a live host (SANLK_ACQUIRE_IDLIVE)";
    case SANLK_ACQUIRE_OWNED: return "owned by another host (SANLK_ACQUIRE_OWNED)";
    case SANLK_ACQUIRE_OTHER: return "another host won the ballot (SANLK_ACQUIRE_OTHER)";
    case SANLK_ACQUIRE_SHRETRY:
      return "held exclusively, shared retry exhausted (SANLK_ACQUIRE_SHRETRY)";
    case SANLK_ACQUIRE_OWNED_RETRY:
      return "the holding host stopped renewing; it is not yet dead (SANLK_ACQUIRE_OWNED_RETRY)";
    case SANLK_RELEASE_LVER:
      return "the lease version on disk moved while held (SANLK_RELEASE_LVER): the lease was "
             "taken over; treat it as lost";
    case SANLK_RELEASE_OWNER:
      return "another host owns the lease on disk (SANLK_RELEASE_OWNER): it was taken over; "
             "treat it as lost";
    case SANLK_RENEW_OWNER:
      return "another host holds this host_id (SANLK_RENEW_OWNER): two hosts share a host_id; "
             "give each host its own";
    case SANLK_RENEW_DIFF:
      return "this host's delta lease changed under it (SANLK_RENEW_DIFF): another host uses "
             "the same host_id";
    case SANLK_HOSTID_BUSY:
      return "host_id in use by another live host (SANLK_HOSTID_BUSY); give each host its own";
    case SANLK_REQUEST_MAGIC:
    case SANLK_REQUEST_VERSION:
      return absl::StrCat("the lease's request record is not sanlock's (", rv, ")");
    case SANLK_REQUEST_OLD:
      return "a request for an older lease version (SANLK_REQUEST_OLD)";
    case SANLK_REQUEST_LVER:
      return "a request for a newer lease version (SANLK_REQUEST_LVER)";
    case SANLK_RINDEX_MAGIC:
    case SANLK_RINDEX_VERSION:
    case SANLK_RINDEX_LOCKSPACE:
    case SANLK_RINDEX_OFFSET:
    case SANLK_RINDEX_DIFF:
      return absl::StrCat("sanlock's resource index is not usable (", rv, ")");
    default: break;
  }
  if (rv < 0 && rv > -200) return absl::StrCat(strerror(-rv), " (", rv, ")");
  return absl::StrCat("sanlock error ", rv, " (unknown to this latchkey)");
}

}  // namespace sanlockbe
}  // namespace latchkey
