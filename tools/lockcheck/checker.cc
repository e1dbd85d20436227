#include "tools/lockcheck/checker.h"

#include <algorithm>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"

namespace latchkey {
namespace lockcheck {
namespace {

constexpr int64_t kForever = std::numeric_limits<int64_t>::max();

// A span during which `process` surely held `mode` of a resource.
struct Held {
  std::string process;
  LockMode mode;
  int64_t from, to;        // surely held in [from, to)
  size_t grant_line, end_line;  // end_line 0: held to the end of the history
};

struct Grant {
  LockMode mode;
  uint64_t token;
  int64_t earliest, latest;  // when it completed, widened by its uncertainty
  size_t line;
};

// What the checker knows of one process on one resource.
struct State {
  bool holding = false;  // surely holds `mode` since `since`
  LockMode mode = LockMode::kExclusive;
  int64_t since = 0;
  size_t since_line = 0;
  bool lost = false;  // its lock was reported lost, and it has not acquired since
  size_t lost_line = 0;
  // Whether it held, and in which mode, when its conversion or release was
  // invoked (a failed one leaves that mode held).
  bool held_before = false;
  LockMode mode_before = LockMode::kExclusive;
};

}  // namespace

Report Check(const std::vector<Event>& history) {
  Report rep;
  rep.events = history.size();
  std::map<std::pair<std::string, std::string>, State> states;  // (process, resource)
  std::map<std::string, std::vector<Held>> held;                // by resource
  std::map<std::string, std::vector<Grant>> grants;             // by resource
  const auto close = [&](State& s, const Event& e) {
    if (!s.holding) return;
    s.holding = false;
    const int64_t to = e.time_ns - e.uncertainty_ns;
    held[e.resource].push_back({e.process, s.mode, s.since, to, s.since_line, e.line});
  };
  const auto open = [&](State& s, const Event& e, LockMode mode) {
    s.holding = true;
    s.mode = mode;
    s.since = e.time_ns + e.uncertainty_ns;
    s.since_line = e.line;
  };
  for (const Event& e : history) {
    State& s = states[{e.process, e.resource}];
    switch (e.type) {
      case EventType::kInvoke:
        ++rep.operations;
        // From here the old mode may go at any moment.
        if (e.op == Op::kRelease || e.op == Op::kConvert) {
          s.held_before = s.holding;
          s.mode_before = s.mode;
          close(s, e);
        }
        break;
      case EventType::kOk:
        if ((e.op == Op::kConvert || e.op == Op::kRelease) && s.lost) {
          rep.violations.push_back(
              {"grant-after-loss", e.resource,
               absl::StrCat(e.process, "'s lock on ", e.resource, " was reported lost (line ",
                            s.lost_line, "), and then its ",
                            e.op == Op::kConvert ? "conversion" : "release",
                            " succeeded (line ", e.line, ") without a new acquire"),
               {s.lost_line, e.line}});
        }
        if (e.op == Op::kAcquire || e.op == Op::kConvert) {
          ++rep.grants;
          open(s, e, e.mode);
          s.lost = false;
          if (e.token) {
            grants[e.resource].push_back({e.mode, *e.token, e.time_ns - e.uncertainty_ns,
                                          e.time_ns + e.uncertainty_ns, e.line});
          }
        }
        break;
      case EventType::kFail:
        // A failed conversion or release leaves the old mode held.
        if ((e.op == Op::kConvert || e.op == Op::kRelease) && s.held_before && !s.lost) {
          open(s, e, s.mode_before);
        }
        break;
      case EventType::kInfo:
        ++rep.unknown;
        s.holding = false;  // unknown: claims nothing more
        break;
      case EventType::kLost:
        ++rep.losses;
        close(s, e);
        s.lost = true;
        s.lost_line = e.line;
        break;
    }
  }
  for (auto& [key, s] : states) {  // still held at the end
    if (s.holding) held[key.second].push_back({key.first, s.mode, s.since, kForever, s.since_line, 0});
  }

  // Mutual exclusion: a sweep over each resource's spans by start.
  for (auto& [resource, spans] : held) {
    std::sort(spans.begin(), spans.end(),
              [](const Held& a, const Held& b) { return a.from < b.from; });
    std::vector<const Held*> active;
    for (const Held& h : spans) {
      if (h.to <= h.from) continue;  // too short to be sure of
      active.erase(std::remove_if(active.begin(), active.end(),
                                  [&](const Held* a) { return a->to <= h.from; }),
                   active.end());
      for (const Held* a : active) {
        if (a->process == h.process || ModesCompatible(a->mode, h.mode)) continue;
        std::vector<size_t> lines = {a->grant_line, h.grant_line};
        if (a->end_line) lines.push_back(a->end_line);
        if (h.end_line) lines.push_back(h.end_line);
        std::sort(lines.begin(), lines.end());
        rep.violations.push_back(
            {"mutual-exclusion", resource,
             absl::StrCat(h.process, " was granted ", LockModeName(h.mode), " of ", resource,
                          " (line ", h.grant_line, ") while ", a->process, " held it ",
                          LockModeName(a->mode), " (granted line ", a->grant_line, ", ",
                          a->end_line ? absl::StrCat("let go line ", a->end_line)
                                      : std::string("never let go"),
                          "), beyond the clocks' uncertainty"),
             lines});
      }
      active.push_back(&h);
    }
  }

  // Tokens: each grant against the grants that surely completed before it.
  for (auto& [resource, gs] : grants) {
    std::vector<const Grant*> by_latest, by_earliest;
    for (const Grant& g : gs) {
      by_latest.push_back(&g);
      by_earliest.push_back(&g);
    }
    std::sort(by_latest.begin(), by_latest.end(),
              [](const Grant* a, const Grant* b) { return a->latest < b->latest; });
    std::sort(by_earliest.begin(), by_earliest.end(),
              [](const Grant* a, const Grant* b) { return a->earliest < b->earliest; });
    const Grant* max_any = nullptr;        // the highest token surely before
    const Grant* max_exclusive = nullptr;  // the highest exclusive token surely before
    size_t k = 0;
    for (const Grant* g : by_earliest) {
      while (k < by_latest.size() && by_latest[k]->latest < g->earliest) {
        const Grant* p = by_latest[k++];
        if (max_any == nullptr || p->token > max_any->token) max_any = p;
        if (p->mode == LockMode::kExclusive &&
            (max_exclusive == nullptr || p->token > max_exclusive->token)) {
          max_exclusive = p;
        }
      }
      const Grant* bad = nullptr;
      if (g->mode == LockMode::kExclusive && max_any != nullptr && g->token <= max_any->token) {
        bad = max_any;
      } else if (max_exclusive != nullptr && g->token < max_exclusive->token) {
        bad = max_exclusive;
      }
      if (bad != nullptr) {
        rep.violations.push_back(
            {"token-order", resource,
             absl::StrCat("the ", LockModeName(g->mode), " grant of ", resource, " on line ",
                          g->line, " carries token ", g->token, ", not above token ", bad->token,
                          " granted ", LockModeName(bad->mode), " before it (line ", bad->line,
                          ")"),
             {bad->line, g->line}});
      }
    }
  }
  return rep;
}

nlohmann::json Report::ToJson(const std::vector<Event>& history) const {
  std::map<size_t, const Event*> by_line;
  for (const Event& e : history) by_line[e.line] = &e;
  nlohmann::json v = nlohmann::json::array();
  std::map<std::string, int> kinds;
  for (const Violation& x : violations) {
    ++kinds[x.kind];
    nlohmann::json slice = nlohmann::json::array();
    for (size_t l : x.lines) {
      auto it = by_line.find(l);
      slice.push_back({{"line", l}, {"event", it == by_line.end() ? "" : it->second->text}});
    }
    v.push_back({{"kind", x.kind}, {"resource", x.resource}, {"what", x.what}, {"slice", slice}});
  }
  return {{"events", events},     {"operations", operations}, {"grants", grants},
          {"losses", losses},     {"unknown", unknown},       {"violations", violations.size()},
          {"by_kind", kinds},     {"details", v}};
}

}  // namespace lockcheck
}  // namespace latchkey
