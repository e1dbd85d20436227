#include "tools/latchbench/contention.h"

#include <unistd.h>

#include <chrono>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"

namespace latchkey {
namespace bench {

int PickResource(uint64_t* state, int resources, bool hot_spot) {
  // splitmix64: small, seedable, the same on every machine.
  const auto next = [state] {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  if (resources <= 1) return 0;
  if (hot_spot) {
    if (next() % 100 < 80) return 0;
    return 1 + static_cast<int>(next() % static_cast<uint64_t>(resources - 1));
  }
  return static_cast<int>(next() % static_cast<uint64_t>(resources));
}

absl::StatusOr<std::vector<OwnerTally>> RunContention(const ContendOptions& o,
                                                      const PathMaker& make_path,
                                                      const std::function<void()>& ready,
                                                      const std::atomic<bool>* stop) {
  if (o.owners < 1 || o.resources < 1 || !(o.seconds > 0)) {
    return absl::InvalidArgumentError("contention needs owners >= 1, resources >= 1, seconds > 0");
  }
  std::vector<std::vector<std::unique_ptr<CyclePath>>> paths(static_cast<size_t>(o.owners));
  for (int i = 0; i < o.owners; ++i) {
    for (int k = 0; k < o.resources; ++k) {
      absl::StatusOr<std::unique_ptr<CyclePath>> p = make_path(i, k);
      if (!p.ok()) {
        return absl::Status(p.status().code(), absl::StrCat("owner ", i + 1, ", resource ", k + 1,
                                                            ": ", p.status().message()));
      }
      paths[static_cast<size_t>(i)].push_back(std::move(*p));
    }
  }
  if (ready) ready();
  std::vector<OwnerTally> tallies(static_cast<size_t>(o.owners));
  std::atomic<bool> failed{false};
  std::mutex mu;
  absl::Status first_error;
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       std::chrono::duration<double>(o.seconds));
  std::vector<std::thread> threads;
  for (int i = 0; i < o.owners; ++i) {
    threads.emplace_back([&, i] {
      uint64_t state = o.seed + static_cast<uint64_t>(i);
      OwnerTally& t = tallies[static_cast<size_t>(i)];
      while (!failed && (stop == nullptr || !*stop) && std::chrono::steady_clock::now() < end) {
        CyclePath& p = *paths[static_cast<size_t>(i)][static_cast<size_t>(
            PickResource(&state, o.resources, o.hot_spot))];
        const auto t0 = std::chrono::steady_clock::now();
        absl::Status s = p.AcquireWaiting(o.mode, o.wait_timeout);
        const auto t1 = std::chrono::steady_clock::now();
        if (s.ok()) {
          t.waits.push_back(std::chrono::duration<double>(t1 - t0).count());
          ++t.grants;
          if (o.hold_us > 0) usleep(static_cast<useconds_t>(o.hold_us));
          s = p.Release();
        }
        if (!s.ok()) {
          std::lock_guard<std::mutex> l(mu);
          if (first_error.ok()) {
            first_error = absl::Status(s.code(), absl::StrCat("owner ", i + 1, ": ", s.message()));
          }
          failed = true;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (!first_error.ok()) return first_error;
  if (stop != nullptr && *stop) return absl::CancelledError("interrupted");
  return tallies;
}

double JainIndex(const std::vector<int64_t>& grants) {
  double sum = 0, squares = 0;
  for (int64_t g : grants) {
    sum += static_cast<double>(g);
    squares += static_cast<double>(g) * static_cast<double>(g);
  }
  if (grants.empty() || squares == 0) return 1.0;
  return sum * sum / (static_cast<double>(grants.size()) * squares);
}

nlohmann::json TalliesToJson(const std::vector<OwnerTally>& t) {
  nlohmann::json owners = nlohmann::json::array();
  for (const OwnerTally& o : t) owners.push_back({{"grants", o.grants}, {"waits", o.waits}});
  return {{"owners", owners}};
}

absl::StatusOr<std::vector<OwnerTally>> TalliesFromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("owners") || !j["owners"].is_array()) {
    return absl::InvalidArgumentError("no \"owners\" array");
  }
  std::vector<OwnerTally> out;
  for (const nlohmann::json& o : j["owners"]) {
    if (!o.is_object() || !o.contains("grants") || !o["grants"].is_number_integer() ||
        !o.contains("waits") || !o["waits"].is_array()) {
      return absl::InvalidArgumentError("an owner without \"grants\" and \"waits\"");
    }
    OwnerTally t;
    t.grants = o["grants"].get<int64_t>();
    for (const nlohmann::json& w : o["waits"]) {
      if (!w.is_number()) return absl::InvalidArgumentError("a wait that is not a number");
      t.waits.push_back(w.get<double>());
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace bench
}  // namespace latchkey
