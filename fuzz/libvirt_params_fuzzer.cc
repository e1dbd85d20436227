// Fuzz target: the libvirt adapter's translation of libvirt's lock-driver
// calls (domain params, resources with their params and flags, acquire
// flags, state strings, <on_lockfailure>) into latchd requests.
//
// latchkey.so is loaded as libvirtd loads it (dlopen, virLockDriverImpl),
// configured by a fuzzed qemu-latchkey.conf, and pointed at a fake latchd:
// a thread on a private socket that checks every request it receives and
// answers it with a well-formed response (some fields chosen by the input,
// such as refusals, unknown owners, other holders, or a fuzzed JSON value
// in one place of the response).
//
// Properties: no crash or sanitizer report in the plugin; every request is
// one JSON object of protocol version 1 whose fields latchd's rules accept
// (known op, owner with a uuid, name and pid > 0, a known policy, resource
// specs with exactly one of disk and lease and a known mode, no path or
// offset on disks); every failed call reported an error through libvirt's
// error function.
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz/fuzz_util.h"
#include "libvirt-adapter/lock_driver_abi.h"
#include "nlohmann/json.hpp"

namespace {
int g_errors = 0;  // errors the plugin reported since the last reset
}  // namespace

// libvirt's error reporter, found by the plugin with dlsym (-rdynamic).
extern "C" __attribute__((visibility("default"))) void virReportErrorHelper(
    int domain, int code, const char*, const char*, size_t, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  FUZZ_CHECK(domain == kLkErrorDomainLocking, buf);
  // Only the labels the adapter chooses by cause (libvirt-adapter/README.md).
  FUZZ_CHECK(code == kLkErrorInternal || code == kLkErrorInvalidArg || code == kLkErrorConfig ||
                 code == kLkErrorSystem || code == kLkErrorConfigUnsupported ||
                 code == kLkErrorResourceBusy,
             buf);
  FUZZ_CHECK(strncmp(buf, "latchkey: ", 10) == 0, buf);
  ++g_errors;
}

namespace latchkey {
namespace {

using json = nlohmann::json;

// How the fake latchd answers, set per input before any call.
struct Behaviour {
  bool inquire_unknown = false;   // inquire: not_found
  bool acquire_refused = false;   // acquire: unavailable
  bool register_refused = false;  // register: invalid_argument
  bool other_holder = false;      // holders: another domain holds each resource
  std::string holder_mode = "exclusive";
  int inject_at = -1;             // which response gets `inject` (by count)
  std::string inject_field;       // ... in which field
  json inject;                    // the fuzzed value
};

std::mutex g_mu;
Behaviour g_behaviour;  // guarded by g_mu
int g_responses = 0;    // guarded by g_mu
json g_locks = json::array();  // what the fake latchd holds for the domain

const char* const kOps[] = {"hello",   "register",   "set_policy", "acquire", "queue",
                            "release", "inquire",    "unregister", "holders", "status",
                            "reexec"};

void CheckSpec(const json& spec) {
  FUZZ_CHECK(spec.is_object(), spec.dump());
  FUZZ_CHECK(spec.contains("disk") != spec.contains("lease"), spec.dump());
  for (auto it = spec.begin(); it != spec.end(); ++it) {
    const std::string& k = it.key();
    FUZZ_CHECK(k == "disk" || k == "lease" || k == "lockspace" || k == "backend" || k == "path" ||
                   k == "offset" || k == "mode",
               spec.dump());
    if (k == "offset") {
      FUZZ_CHECK(it->is_number_unsigned(), spec.dump());
    } else {
      FUZZ_CHECK(it->is_string(), spec.dump());
    }
  }
  if (spec.contains("disk")) FUZZ_CHECK(!spec.contains("path") && !spec.contains("offset"), spec.dump());
  const std::string mode = spec.value("mode", "exclusive");
  FUZZ_CHECK(mode == "exclusive" || mode == "shared-read" || mode == "shared-write", spec.dump());
}

// Checks one request; returns the response line.
std::string Answer(const std::string& line) {
  const json req = json::parse(line, nullptr, false);
  FUZZ_CHECK(!req.is_discarded() && req.is_object(), line);
  FUZZ_CHECK(req.value("v", 0) == 1, line);
  FUZZ_CHECK(req.contains("id") && req["id"].is_number_integer(), line);
  const std::string op = req.value("op", "");
  bool known = false;
  for (const char* k : kOps) known |= op == k;
  FUZZ_CHECK(known, line);

  std::lock_guard<std::mutex> l(g_mu);
  const Behaviour& b = g_behaviour;
  json resp = {{"v", 1}, {"id", req["id"]}, {"ok", true}};
  auto refuse = [&](const char* code, const char* message) {
    resp["ok"] = false;
    resp["error"] = {{"code", code}, {"message", message}};
  };
  if (op != "hello" && op != "status" && op != "holders" && op != "reexec") {
    FUZZ_CHECK(req.contains("uuid") || op == "register", line);
  }
  if (op == "register") {
    const json& o = req.at("owner");
    FUZZ_CHECK(o.at("uuid").is_string() && o["uuid"].get<std::string>().size() == 36, line);
    FUZZ_CHECK(o.at("name").is_string() && !o["name"].get<std::string>().empty(), line);
    FUZZ_CHECK(o.at("pid").is_number_integer() && o["pid"].get<int64_t>() > 0, line);
    const std::string p = req.value("policy", "");
    FUZZ_CHECK(p == "terminate" || p == "pause" || p == "ignore", line);
    FUZZ_CHECK(req.at("grace_ms").is_number_integer() && req["grace_ms"].get<int64_t>() >= 0, line);
    if (b.register_refused) {
      refuse("invalid_argument", "owner refused");
    } else {
      resp["owner"] = o;
      resp["policy"] = p;
      resp["grace_ms"] = req["grace_ms"];
      resp["locks"] = g_locks;
    }
  } else if (op == "holders" || op == "acquire" || op == "queue" || op == "release") {
    const json* specs = req.contains("resources") ? &req["resources"] : nullptr;
    if (op != "release") FUZZ_CHECK(specs != nullptr && specs->is_array() && !specs->empty(), line);
    if (specs != nullptr) {
      FUZZ_CHECK(specs->is_array(), line);
      for (const json& s : *specs) CheckSpec(s);
    }
    if (op == "acquire" && req.contains("state")) FUZZ_CHECK(req["state"].is_string(), line);
    if (op == "queue") {
      // The fake stands for posixfd, which has no ordered queue.
      refuse("unimplemented", "backend posixfd cannot queue a request ahead of time");
    } else if (op == "holders") {
      json views = json::array();
      for (const json& s : *specs) {
        json r = {{"backend", s.value("backend", "posixfd")},
                  {"kind", s.contains("disk") ? "disk" : "lease"},
                  {"lockspace", s.value("lockspace", "default")},
                  {"name", "n"},
                  {"path", s.value("disk", s.value("path", ""))},
                  {"offset", 0}};
        json holders = json::array();
        if (b.other_holder) {
          holders.push_back({{"owner", {{"uuid", "00000000-0000-4000-8000-000000000001"},
                                        {"name", "other"}, {"pid", 1}, {"host", "h"}}},
                             {"mode", b.holder_mode},
                             {"fencing_token", 1}});
        }
        views.push_back({{"resource", r}, {"holders", holders}});
      }
      resp["resources"] = views;
    } else if (op == "acquire") {
      if (b.acquire_refused) {
        refuse("unavailable", "held by someone");
      } else {
        json locks = json::array();
        for (const json& s : *specs) {
          json lk = {{"backend", s.value("backend", "posixfd")},
                     {"kind", s.contains("disk") ? "disk" : "lease"},
                     {"lockspace", s.value("lockspace", "default")},
                     {"name", s.value("lease", "sha")},
                     {"path", s.value("disk", s.value("path", ""))},
                     {"offset", s.value("offset", uint64_t{0})},
                     {"mode", s.value("mode", "exclusive")},
                     {"fencing_token", 7}};
          locks.push_back(lk);
          g_locks.push_back(lk);
        }
        resp["locks"] = locks;
      }
    } else {
      resp["released"] = g_locks;
      resp["state"] = "latchkey1;posixfd:default:sha:ex:7";
      g_locks = json::array();
    }
  } else if (op == "inquire") {
    if (b.inquire_unknown) {
      refuse("not_found", "no such owner");
    } else {
      resp["owner"] = {{"uuid", req["uuid"]}, {"name", "vm"}, {"pid", 1}, {"host", "h"}};
      resp["policy"] = "terminate";
      resp["alive"] = true;
      resp["locks"] = g_locks;
      resp["state"] = "latchkey1";
    }
  } else {
    resp["released"] = json::array();
    resp["state"] = "latchkey1";
  }
  if (g_responses++ == b.inject_at && resp["ok"] == true && !b.inject_field.empty()) {
    resp[b.inject_field] = b.inject;
  }
  return resp.dump() + "\n";
}

void Serve(int listen_fd) {
  while (true) {
    const int fd = accept(listen_fd, nullptr, nullptr);
    if (fd < 0) continue;
    std::string buf;
    char chunk[4096];
    while (true) {
      const ssize_t n = read(fd, chunk, sizeof chunk);
      if (n <= 0) break;
      buf.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        const std::string reply = Answer(buf.substr(0, nl));
        buf.erase(0, nl + 1);
        size_t off = 0;
        while (off < reply.size()) {
          const ssize_t w = send(fd, reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
          if (w <= 0) break;
          off += static_cast<size_t>(w);
        }
      }
    }
    close(fd);
  }
}

LkDriver* g_driver = nullptr;
std::string g_socket;
std::string g_config_path;

const char* const kConfigLines[] = {
    "auto_disk_leases = 0",         "auto_disk_leases = 1",
    "require_lease_for_disks = 1",  "require_lease_for_disks = 0",
    "readonly_disks = \"shared-read\"", "readonly_disks = \"unlocked\"",
    "backend = \"posixfd\"",        "backend = \"sanlock\"",
    "lockspace = \"LS\"",           "lock_failure_policy = \"pause\"",
    "lock_failure_policy = \"ignore\"", "terminate_grace_ms = 0",
    "timeout_ms = 2000",            "lockspace = \".bad\"",
};

const char* const kParamKeys[] = {"uuid", "name", "pid", "id", "uri", "path", "offset", "lockspace"};
const char* const kNames[] = {"/img/a.qcow2", "/img/b.qcow2", "lease1", "relative.img", "/", "/img/../img/a.qcow2"};
const unsigned char kUuids[3][16] = {
    {0x6f, 0x1c, 0x2e, 0x9a, 0x1b, 0x2c, 0x4d, 0x3e, 0x8f, 0x90, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab},
    {0}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};

// Params whose strings live in `strings` (kept alive by the caller).
std::vector<LkParam> Params(fuzz::ByteReader& in, std::vector<std::string>& strings, size_t n) {
  std::vector<LkParam> params(n);
  strings.reserve(strings.size() + 2 * n);
  for (LkParam& p : params) {
    memset(&p, 0, sizeof p);
    const uint8_t k = in.Byte();
    if (k < 240) {
      p.key = kParamKeys[k % (sizeof kParamKeys / sizeof *kParamKeys)];
    } else if (k < 250) {
      strings.push_back(in.String(16));
      p.key = strings.back().c_str();
    }  // else: a NULL key
    p.type = in.Byte() % 9;  // 8 is no type libvirt has
    switch (p.type) {
      case kLkParamString:
      case kLkParamCString: {
        const uint8_t pick = in.Byte();
        if (pick < 200) {
          strings.push_back(in.String(40));
        } else {
          strings.push_back(kNames[pick % (sizeof kNames / sizeof *kNames)]);
        }
        if (pick == 255) {
          p.value.cstr = nullptr;
        } else {
          p.value.cstr = strings.back().c_str();
        }
        break;
      }
      case kLkParamUuid: {
        const uint8_t pick = in.Byte();
        if (pick < 32) {
          for (unsigned char& c : p.value.uuid) c = in.Byte();
        } else {
          memcpy(p.value.uuid, kUuids[pick % 3], 16);
        }
        break;
      }
      default:
        p.value.ul = in.Byte() < 128 ? static_cast<unsigned long long>(getpid()) : in.U64();
    }
  }
  return params;
}

void SetBehaviour(fuzz::ByteReader& in) {
  Behaviour b;
  const uint8_t f = in.Byte();
  b.inquire_unknown = f & 1;
  b.acquire_refused = f & 2;
  b.register_refused = (f & 0x0c) == 0x0c;
  b.other_holder = f & 0x10;
  const char* modes[] = {"exclusive", "shared-read", "shared-write", "bogus"};
  b.holder_mode = modes[(f >> 5) & 3];
  if (f & 0x80) {
    const char* fields[] = {"locks", "resources", "owner", "state", "released", "policy"};
    b.inject_at = in.Byte() % 8;
    b.inject_field = fields[in.Byte() % 6];
    b.inject = json::parse(in.String(60), nullptr, false);
    if (b.inject.is_discarded()) b.inject = nullptr;
  }
  std::lock_guard<std::mutex> l(g_mu);
  g_behaviour = std::move(b);
  g_responses = 0;
  g_locks = json::array();
}

}  // namespace
}  // namespace latchkey

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  using namespace latchkey;  // NOLINT
  (void)argc;
  fuzz::SetProgram((*argv)[0]);
  const std::string so = fuzz::Runfile("libvirt-adapter/latchkey.so");
  void* h = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  FUZZ_CHECK(h != nullptr, dlerror());
  g_driver = static_cast<LkDriver*>(dlsym(h, "virLockDriverImpl"));
  FUZZ_CHECK(g_driver != nullptr, "virLockDriverImpl");
  const std::string dir = fuzz::ScratchDir("libvirt");
  g_socket = dir + "/latchd.sock";
  g_config_path = dir + "/qemu-latchkey.conf";
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  FUZZ_CHECK(g_socket.size() < sizeof addr.sun_path, g_socket);
  memcpy(addr.sun_path, g_socket.data(), g_socket.size());
  FUZZ_CHECK(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, strerror(errno));
  FUZZ_CHECK(listen(fd, 16) == 0, strerror(errno));
  std::thread(Serve, fd).detach();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace latchkey;  // NOLINT
  fuzz::ByteReader in(data, size);

  // qemu-latchkey.conf: the fake latchd's socket, chosen lines, maybe a
  // fuzzed line.
  const uint8_t conf = in.Byte();
  std::string text = conf == 0xff ? "" : absl::StrCat("socket = \"", g_socket, "\"\n");
  for (int i = 0, n = in.Byte() % 4; i < n; ++i) {
    absl::StrAppend(&text, kConfigLines[in.Byte() % (sizeof kConfigLines / sizeof *kConfigLines)], "\n");
  }
  if (conf & 0x80) absl::StrAppend(&text, in.String(40), "\n");
  std::ofstream(g_config_path, std::ios::trunc) << text;
  const uint32_t version = (conf & 0x40) && (conf & 1) ? in.U32() : kLkDriverVersion;

  g_errors = 0;
  if (g_driver->init(version, g_config_path.c_str(), 0) != 0) {
    FUZZ_CHECK(g_errors == 1, "init failed without one error report");
    g_driver->deinit();
    return 0;
  }
  SetBehaviour(in);

  std::vector<std::string> strings;
  std::vector<LkParam> params = Params(in, strings, in.Byte() % 6);
  LkManager m = {g_driver, nullptr};
  const uint32_t object_type = in.Byte() < 250 ? kLkObjectDomain : 1;
  g_errors = 0;
  if (g_driver->new_manager(&m, object_type, params.size(), params.data(), 0) != 0) {
    FUZZ_CHECK(g_errors == 1 && m.private_data == nullptr, "new_manager failed quietly");
    g_driver->deinit();
    return 0;
  }
  for (int i = 0, n = in.Byte() % 5; i < n; ++i) {
    const uint8_t t = in.Byte();
    const uint32_t type = t < 120 ? kLkResourceDisk : t < 250 ? kLkResourceLease : t;
    const uint8_t pick = in.Byte();
    std::string name = pick < 128 ? kNames[pick % (sizeof kNames / sizeof *kNames)] : in.String(60);
    std::vector<LkParam> rp = Params(in, strings, in.Byte() % 4);
    const uint32_t flags = in.Byte() & 3;
    g_errors = 0;
    if (g_driver->add_resource(&m, type, pick == 255 ? nullptr : name.c_str(), rp.size(), rp.data(),
                               flags) != 0) {
      FUZZ_CHECK(g_errors == 1, "add_resource failed quietly");
    }
  }
  for (int i = 0, n = 1 + in.Byte() % 5; i < n && !in.empty(); ++i) {
    const uint8_t call = in.Byte() % 5;
    g_errors = 0;
    int rc = 0;
    char* state = nullptr;
    if (call == 0 || call == 1) {
      const uint32_t flags = call == 0 ? kLkAcquireRegisterOnly : 0;
      const uint8_t s = in.Byte();
      std::string st = s < 64 ? in.String(80) : "latchkey1;posixfd:default:sha:ex:7";
      rc = g_driver->acquire(&m, s < 200 ? st.c_str() : nullptr, flags, in.Byte() % 7, nullptr);
    } else if (call == 2 || call == 3) {
      rc = g_driver->release(&m, call == 2 ? &state : nullptr, 0);
    } else {
      rc = g_driver->inquire(&m, &state, 0);
    }
    FUZZ_CHECK(rc == 0 || rc == -1, absl::StrCat("rc ", rc));
    FUZZ_CHECK(rc == 0 || g_errors == 1, "a failed call reports one error");
    FUZZ_CHECK(rc == 0 || state == nullptr, "no state on failure");
    free(state);
  }
  g_driver->free_manager(&m);
  FUZZ_CHECK(m.private_data == nullptr, "free_manager clears private_data");
  g_driver->deinit();
  // Free this input's server state now, so that each run frees what it
  // allocated (libFuzzer runs a leak check after any run that does not).
  std::lock_guard<std::mutex> l(g_mu);
  g_behaviour = Behaviour();
  g_locks = json::array();
  return 0;
}
