#include "tools/latchbench/cost_counters.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

TEST(CostCountersTest, ParsesDiskstatsNetDevAndStatLines) {
  const auto disk = ParseDiskstats(
      "   8       0 sda 120 3 2048 50 40 1 800 90 0 100 140 0 0 0 0\n"
      "   8      16 sdb 7 0 56 1 9 0 72 2 0 3 3\n"
      "garbage line\n");
  ASSERT_EQ(disk.size(), 2u);
  EXPECT_EQ(disk.at("sda"), (std::array<uint64_t, 4>{120, 2048 * 512, 40, 800 * 512}));
  EXPECT_EQ(disk.at("sdb")[2], 9u);

  const auto net = ParseNetDev(
      "Inter-|   Receive                                                |  Transmit\n"
      " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n"
      "    lo:  1000      10    0    0    0     0          0         0     1000      10 0 0 0 0 0 0\n"
      "  eth0: 52000     400    0    0    0     0          0         0    61000     450 0 0 0 0 0 0\n");
  ASSERT_EQ(net.size(), 2u);
  EXPECT_EQ(net.at("eth0"), (std::array<uint64_t, 4>{400, 52000, 450, 61000}));

  std::string comm;
  uint64_t ticks = 0;
  ASSERT_TRUE(ParseProcStat(
      "123 (dlm_controld) S 1 123 123 0 -1 4194560 100 0 0 0 25 17 0 0 20 0 1 0 50 0 0", &comm,
      &ticks));
  EXPECT_EQ(comm, "dlm_controld");
  EXPECT_EQ(ticks, 42u);
  // A name with spaces and parentheses ends at the last ')'.
  ASSERT_TRUE(ParseProcStat("9 (a (b) c) R 1 9 9 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5 0 0", &comm,
                            &ticks));
  EXPECT_EQ(comm, "a (b) c");
  EXPECT_EQ(ticks, 7u);
  EXPECT_FALSE(ParseProcStat("no parentheses", &comm, &ticks));
  EXPECT_FALSE(ParseProcStat("1 (x) S 1 2", &comm, &ticks));

  uint64_t busy = 0, total = 0;
  ASSERT_TRUE(ParseCpuLine("cpu  100 5 50 1000 20 1 2 0 0 0\ncpu0 ...", &busy, &total));
  EXPECT_EQ(total, 1178u);
  EXPECT_EQ(busy, 158u);  // all but idle (1000) and iowait (20)
  EXPECT_FALSE(ParseCpuLine("intr 1 2 3", &busy, &total));
}

TEST(CostCountersTest, TheDeltaCountsOnlyWhatMovedAndThisProcessesCpu) {
  const CostSnapshot before = TakeCostSnapshot();
  volatile uint64_t x = 0;
  const double start = before.cpu.count("self") ? before.cpu.at("self") : 0;
  for (int round = 0; round < 100; ++round) {  // until the clock ticks at least twice
    for (uint64_t i = 0; i < 20000000; ++i) x = x + i;
    if (TakeCostSnapshot().cpu["self"] - start >= 0.02) break;
  }
  const CostSnapshot after = TakeCostSnapshot();
  const nlohmann::json d = CostDelta(before, after, 10);
  EXPECT_EQ(d["cycles"], 10);
  EXPECT_GE(d["cpu_seconds"]["self"].get<double>(), 0.02) << d.dump();
  EXPECT_GE(d["machine_busy_seconds"].get<double>(), 0.0);
  EXPECT_FALSE(d["net"].contains("lo"));

  CostSnapshot a, b;
  a.disk["sdb"] = {1, 512, 2, 1024};
  b.disk["sdb"] = {3, 1536, 2, 1024};
  a.disk["sdc"] = b.disk["sdc"] = {5, 5, 5, 5};
  a.net["eth1"] = {10, 1000, 10, 1000};
  b.net["eth1"] = {14, 1400, 12, 1300};
  a.cpu["sanlock"] = 1.0;
  b.cpu["sanlock"] = 1.25;
  const nlohmann::json e = CostDelta(a, b, 2);
  EXPECT_EQ(e["disk"].size(), 1u);
  EXPECT_EQ(e["disk"]["sdb"]["reads"], 2);
  EXPECT_EQ(e["disk"]["sdb"]["read_bytes"], 1024);
  EXPECT_EQ(e["disk"]["sdb"]["writes"], 0);
  EXPECT_EQ(e["net"]["eth1"]["tx_bytes"], 300);
  EXPECT_DOUBLE_EQ(e["cpu_seconds"]["sanlock"].get<double>(), 0.25);
}

TEST(CostCountersTest, PerCycleSumsRunsAndDividesByTheirCycles) {
  const nlohmann::json r1 = {{"cycles", 10},
                             {"disk", {{"sdb", {{"reads", 30}, {"read_bytes", 15360}}}}},
                             {"cpu_seconds", {{"latchd", 0.5}}},
                             {"machine_busy_seconds", 2.0}};
  const nlohmann::json r2 = {{"cycles", 30},
                             {"disk", {{"sdb", {{"reads", 10}, {"read_bytes", 5120}}}}},
                             {"net", {{"eth0", {{"tx_packets", 80}}}}},
                             {"cpu_seconds", {{"latchd", 1.5}}},
                             {"machine_busy_seconds", 2.0}};
  const nlohmann::json p = CostPerCycle({r1, nullptr, r2});
  EXPECT_EQ(p["cycles"], 40);
  EXPECT_DOUBLE_EQ(p["disk"]["sdb"]["reads"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(p["disk"]["sdb"]["read_bytes"].get<double>(), 512.0);
  EXPECT_DOUBLE_EQ(p["net"]["eth0"]["tx_packets"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(p["cpu_seconds"]["latchd"].get<double>(), 0.05);
  EXPECT_DOUBLE_EQ(p["machine_busy_seconds"].get<double>(), 0.1);
  EXPECT_TRUE(CostPerCycle({}).is_null());
  EXPECT_TRUE(CostPerCycle({nullptr, {{"cycles", 0}}}).is_null());
}

TEST(CostCountersTest, AnIdleIntervalScaledToTheBlockIsItsBackgroundPerCycle) {
  // 1 s idle: 4 packets and 2 writes; the block lasted 0.5 s over 10 cycles.
  const nlohmann::json idle = {{"cycles", 0},
                               {"disk", {{"sdb", {{"writes", 2}}}}},
                               {"net", {{"eth0", {{"rx_packets", 4}}}}},
                               {"machine_busy_seconds", 0.02}};
  const nlohmann::json bg = ScaledCost(idle, 0.5);
  EXPECT_FALSE(bg.contains("cycles"));
  EXPECT_DOUBLE_EQ(bg["disk"]["sdb"]["writes"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(bg["net"]["eth0"]["rx_packets"].get<double>(), 2.0);
  nlohmann::json run = {{"cycles", 10}, {"net", {{"eth0", {{"rx_packets", 30}}}}}};
  run["background"] = bg;
  run["seconds"] = 0.5;
  run["background_idle_seconds"] = 1.0;
  const nlohmann::json p = CostPerCycle({run, run});
  EXPECT_FALSE(p.contains("seconds"));
  EXPECT_FALSE(p.contains("background_idle_seconds"));
  EXPECT_DOUBLE_EQ(p["net"]["eth0"]["rx_packets"].get<double>(), 3.0);
  EXPECT_DOUBLE_EQ(p["background"]["net"]["eth0"]["rx_packets"].get<double>(), 0.2);
  EXPECT_DOUBLE_EQ(p["background"]["disk"]["sdb"]["writes"].get<double>(), 0.1);
  EXPECT_DOUBLE_EQ(p["background"]["machine_busy_seconds"].get<double>(), 0.001);
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
