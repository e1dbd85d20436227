// The failover scenario's lab-free part: which faults apply where, what is
// expected, the detector's shell, and the trial's record from its stamps.
#include "tools/latchbench/failover.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(FailoverTest, FaultsApplyWhereTheyMeanSomething) {
  EXPECT_THAT(FaultsFor("dlm"), Not(Contains("storage-stall")));  // a DLM lock needs no disk
  EXPECT_THAT(FaultsFor("dlm"), Contains("daemon-kill"));
  EXPECT_THAT(FaultsFor("sanlock"), Contains("storage-stall"));
  EXPECT_THAT(FaultsFor("posixfd"), Contains("storage-stall"));
  EXPECT_THAT(FaultsFor("posixfd"), Not(Contains("daemon-kill")));  // no lock daemon of its own
  EXPECT_TRUE(FaultsFor("nop").empty());
  EXPECT_TRUE(FaultsFor("unknown").empty());
  for (const char* b : {"dlm", "sanlock", "posixfd"}) {
    for (const std::string& f : FaultsFor(b)) EXPECT_TRUE(KnownFault(f)) << f;
  }
  EXPECT_FALSE(KnownFault("node-explode"));
  EXPECT_EQ(LockDaemon("dlm"), "corosync");
  EXPECT_EQ(LockDaemon("sanlock"), "sanlock");
  EXPECT_EQ(Expected("node-kill", true), "grant");
  EXPECT_EQ(Expected("node-kill", false), "grant");
  EXPECT_EQ(Expected("latchd-kill", true), "kept");
  // Locks that die with their holder (posixfd's, with latchd): a limit the
  // backend declares, said so.
  EXPECT_EQ(Expected("latchd-kill", false), "lost");
  EXPECT_THAT(KnownLimit("posixfd", "latchd-kill", false), HasSubstr("docs/libvirt.md"));
  EXPECT_THAT(KnownLimit("posixfd", "latchd-kill", false),
              HasSubstr("no LK_CAP_SURVIVES_HOLDER_DEATH"));
  EXPECT_EQ(KnownLimit("posixfd", "node-kill", false), "");
  EXPECT_EQ(KnownLimit("dlm", "latchd-kill", true), "");
}

TEST(FailoverTest, DetectorsWatchTheHolderOnly) {
  const std::string dlm = DetectorScript("dlm", 2, "latchbench", "/shared/d.out");
  EXPECT_THAT(dlm, HasSubstr("runtime.members.2.status"));
  EXPECT_THAT(dlm, HasSubstr("left"));
  EXPECT_THAT(dlm, HasSubstr(">>/shared/d.out"));
  const std::string san = DetectorScript("sanlock", 2, "latchbench", "/shared/d.out");
  EXPECT_THAT(san, HasSubstr("latchbench:"));  // only this lockspace's hosts
  EXPECT_THAT(san, HasSubstr("$2==\"2\""));
  EXPECT_THAT(san, HasSubstr("FAIL"));
  EXPECT_THAT(san, HasSubstr("DEAD"));
  EXPECT_EQ(DetectorScript("posixfd", 2, "x", "/o"), "");
}

TEST(FailoverTest, RecordSplitsDetectionAndGrant) {
  TrialStamps s;
  s.backend = "dlm";
  s.path = "latchd";
  s.fault = "node-kill";
  s.limit_s = 150;
  s.injected = 1000000000000;
  s.detected = s.injected + 4500000000;  // 4.5 s
  s.detected_as = "left";
  s.holder_down = s.injected + 100000000;
  s.granted = s.injected + 9250000000;  // 9.25 s
  s.ended = s.granted;
  s.events.push_back({1006000, "fence", "node2", "by=node1 result=down"});
  const nlohmann::json r = TrialRecord(s);
  EXPECT_EQ(r["outcome"], "granted");
  EXPECT_TRUE(r["as_expected"].get<bool>());
  EXPECT_DOUBLE_EQ(r["grant_s"].get<double>(), 9.25);
  EXPECT_DOUBLE_EQ(r["detection_s"].get<double>(), 4.5);
  EXPECT_DOUBLE_EQ(r["grant_after_detection_s"].get<double>(), 4.75);
  EXPECT_DOUBLE_EQ(r["holder_down_s"].get<double>(), 0.1);
  EXPECT_TRUE(r["dead_s"].is_null());
  ASSERT_EQ(r["events"].size(), 1u);
  EXPECT_DOUBLE_EQ(r["events"][0]["at_s"].get<double>(), 6.0);
  EXPECT_EQ(r["events"][0]["event"], "fence");
}

TEST(FailoverTest, NoGrantIsAnOutcomeNotAnError) {
  TrialStamps s;
  s.fault = "storage-stall";
  s.limit_s = 150;
  s.injected = 5;
  s.ended = 5 + 150000000000;
  nlohmann::json r = TrialRecord(s);
  EXPECT_EQ(r["outcome"], "not granted in 150 s");
  EXPECT_FALSE(r["as_expected"].get<bool>());
  EXPECT_TRUE(r["grant_s"].is_null());
  EXPECT_TRUE(r["grant_after_detection_s"].is_null());
  // latchd killed while its owner lives: keeping the lock is right, a
  // grant is two holders...
  s.backend = "dlm";
  s.fault = "latchd-kill";
  r = TrialRecord(s);
  EXPECT_EQ(r["outcome"], "kept");
  EXPECT_TRUE(r["as_expected"].get<bool>());
  s.granted = s.injected + 1000;
  r = TrialRecord(s);
  EXPECT_EQ(r["outcome"], "granted");
  EXPECT_FALSE(r["as_expected"].get<bool>());
  // ...except on posixfd, whose limit it is, recorded with its reason.
  s.backend = "posixfd";
  s.locks_survive_holder = false;
  r = TrialRecord(s);
  EXPECT_EQ(r["expected"], "lost");
  EXPECT_TRUE(r["as_expected"].get<bool>());
  EXPECT_THAT(r["known_limit"].get<std::string>(), HasSubstr("OFD locks"));
}

TEST(FailoverTest, DetectionAfterTheGrantIsNotSubtracted) {
  TrialStamps s;
  s.fault = "node-kill";
  s.injected = 10;
  s.granted = 20;
  s.detected = 30;  // seen later than the grant (the detector polls slower)
  EXPECT_TRUE(TrialRecord(s)["grant_after_detection_s"].is_null());
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
