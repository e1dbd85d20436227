// The domains latchkey's libvirt suites start: 64 MiB, one vCPU, QEMU with
// TCG, no guest OS (the firmware runs; the lock flow needs no more).
#ifndef LATCHKEY_LIBVIRT_ADAPTER_TEST_DOMAIN_H_
#define LATCHKEY_LIBVIRT_ADAPTER_TEST_DOMAIN_H_

#include <string>

#include "absl/strings/str_cat.h"

namespace latchkey::testing {

// A domain named `name` with `devices` (libvirt <devices> children: disks,
// controllers) and the lock-failure policy `on_lockfailure` ("" for
// libvirt's default).
//
// The <qemu:capabilities> element turns off one capability for this
// domain: libvirt 9.0 reads back the guest CPU after QEMU starts with one
// monitor command per CPU feature when QEMU has `cpu-unavailable-features`
// (about 400 `qom-get`s), and without it with two. In a UML lab node every
// monitor round trip costs ~55 ms, so `virsh create` took 25 s instead of
// 2.6 s (measured on one node of this machine, no lock manager). What the
// suites test -- the lock manager's calls -- does not depend on it; the
// domain is marked "tainted" (custom-hypervisor-feature) in libvirt's log.
inline std::string TestDomainXml(const std::string& name, const std::string& devices,
                                 const std::string& on_lockfailure = "poweroff") {
  return absl::StrCat(
      "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>", name,
      "</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>",
      "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>",
      on_lockfailure.empty() ? "" : absl::StrCat("<on_lockfailure>", on_lockfailure, "</on_lockfailure>"),
      "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>", devices, "</devices>",
      "<qemu:capabilities><qemu:del capability='cpu-unavailable-features'/></qemu:capabilities>",
      "</domain>");
}

}  // namespace latchkey::testing

#endif  // LATCHKEY_LIBVIRT_ADAPTER_TEST_DOMAIN_H_
