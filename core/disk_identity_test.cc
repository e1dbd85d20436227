// Disk identities: real aliases built with the kernel (hard links, bind
// mounts, loop devices, device nodes, partitions) must give one identity;
// block devices whose sysfs says what they are (WWID, device-mapper UUID,
// multipath, serial) are checked against sysfs fixtures, since this machine
// has no SCSI, NVMe or device-mapper (the cluster lab's iSCSI LUNs are the
// real ones).
#include "core/disk_identity.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/resource.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/aliases/aliases.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

class DiskIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = absl::StrCat(getenv("TEST_TMPDIR"), "/d", ++counter);
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
  }

  std::string File(const std::string& name, size_t size = 4096) {
    const std::string p = absl::StrCat(dir_, "/", name);
    std::ofstream(p) << std::string(size, 'x');
    return p;
  }

  DiskIdentity Id(const std::string& path, const IdentityEnv& env = IdentityEnv()) {
    absl::StatusOr<std::string> canonical = CanonicalImagePath(path);
    EXPECT_TRUE(canonical.ok()) << canonical.status();
    absl::StatusOr<DiskIdentity> id = IdentifyDisk(canonical.ok() ? *canonical : path, env);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : DiskIdentity();
  }

  // A fixture sysfs: dev/block/MAJ:MIN -> devices/.../NAME with `attrs`.
  std::string FakeBlock(const std::string& sysfs, const std::string& devpath, unsigned maj,
                        unsigned min, const std::vector<std::pair<std::string, std::string>>& attrs) {
    const std::string dir = absl::StrCat(sysfs, "/devices/", devpath);
    EXPECT_EQ(system(absl::StrCat("mkdir -p ", dir, " ", sysfs, "/dev/block").c_str()), 0);
    std::ofstream(dir + "/dev") << maj << ":" << min << "\n";
    std::ofstream(dir + "/uevent") << "MAJOR=" << maj << "\nMINOR=" << min
                                   << "\nDEVNAME=" << devpath.substr(devpath.rfind('/') + 1)
                                   << "\n";
    for (const auto& [k, v] : attrs) {
      const std::string f = dir + "/" + k;
      EXPECT_EQ(system(absl::StrCat("mkdir -p $(dirname ", f, ")").c_str()), 0);
      std::ofstream(f) << v << "\n";
    }
    EXPECT_EQ(symlink(dir.c_str(), absl::StrCat(sysfs, "/dev/block/", maj, ":", min).c_str()), 0);
    // A device node with that number, to point IdentifyDisk at.
    const std::string node = absl::StrCat(dir_, "/node-", maj, "-", min);
    EXPECT_EQ(mknod(node.c_str(), S_IFBLK | 0600, makedev(maj, min)), 0);
    return node;
  }

  std::string dir_;
};

TEST_F(DiskIdentityTest, RegularFileIsItsFileSystemAndHandle) {
  const std::string img = File("a.img");
  DiskIdentity id = Id(img);
  EXPECT_TRUE(id.kind == "file" || id.kind == "host-file") << id.kind;
  EXPECT_THAT(id.id, HasSubstr(":fh:"));
  EXPECT_EQ(id.anchor, *CanonicalImagePath(img));
  EXPECT_FALSE(id.weak());
  // A copy is another disk; the same file asked twice is one.
  EXPECT_NE(Id(File("copy.img")).id, id.id);
  EXPECT_EQ(Id(img).id, id.id);
}

TEST_F(DiskIdentityTest, HardLinkIsTheSameDisk) {
  const std::string img = File("a.img");
  const std::string hard = dir_ + "/link.img";
  ASSERT_EQ(::link(img.c_str(), hard.c_str()), 0);
  EXPECT_EQ(Id(hard).id, Id(img).id);
  // Its lock target differs (each its own path), but is the same inode.
  struct stat a, b;
  ASSERT_EQ(stat(Id(hard).anchor.c_str(), &a), 0);
  ASSERT_EQ(stat(Id(img).anchor.c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
}

TEST_F(DiskIdentityTest, BindMountsOfTheFileAndOfItsDirectoryAreTheSameDisk) {
  ASSERT_TRUE(aliases::EnterPrivateMountNamespace().ok());
  const std::string img = File("a.img");
  absl::StatusOr<aliases::BindMount> file = aliases::BindMount::Make(img, dir_ + "/bound.img");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<aliases::BindMount> tree = aliases::BindMount::Make(dir_, dir_ + "-tree");
  ASSERT_TRUE(tree.ok()) << tree.status();
  EXPECT_EQ(Id(dir_ + "/bound.img").id, Id(img).id);
  EXPECT_EQ(Id(dir_ + "-tree/a.img").id, Id(img).id);
}

TEST_F(DiskIdentityTest, LoopDeviceOverTheWholeFileIsTheFileAndASecondNodeIsToo) {
  const std::string img = File("a.img", 1 << 20);
  absl::StatusOr<aliases::LoopDevice> loop = aliases::LoopDevice::Attach(img);
  ASSERT_TRUE(loop.ok()) << loop.status();
  DiskIdentity file = Id(img);
  DiskIdentity dev = Id(loop->path());
  EXPECT_EQ(dev.id, file.id);
  EXPECT_EQ(dev.anchor, file.anchor) << "an image-mode lock must lock the backing file";
  ASSERT_TRUE(aliases::MknodAlias(loop->path(), dir_ + "/second-node").ok());
  EXPECT_EQ(Id(dir_ + "/second-node").id, file.id);
}

TEST_F(DiskIdentityTest, FileSystemUuidNamesTheFileWhereverTheFileSystemIsMounted) {
  ASSERT_TRUE(aliases::EnterPrivateMountNamespace().ok());
  const std::string fsimg = File("fs.img", 16 << 20);
  const std::string uuid = "0b5e7c1d-2f4a-4c39-9d8e-6a7b8c9d0e1f";
  ASSERT_EQ(system(absl::StrCat("mke2fs -q -F -t ext4 -U ", uuid, " ", fsimg).c_str()), 0);
  absl::StatusOr<aliases::LoopDevice> loop = aliases::LoopDevice::Attach(fsimg);
  ASSERT_TRUE(loop.ok()) << loop.status();
  const std::string m1 = dir_ + "/m1", m2 = dir_ + "/m2";
  ASSERT_EQ(mkdir(m1.c_str(), 0700), 0);
  ASSERT_EQ(mkdir(m2.c_str(), 0700), 0);
  ASSERT_EQ(mount(loop->path().c_str(), m1.c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  // The same file system mounted a second time, elsewhere: another host's
  // mount point of a shared file system looks like this.
  ASSERT_EQ(mount(loop->path().c_str(), m2.c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  std::ofstream(m1 + "/vm.img") << "disk";
  DiskIdentity a = Id(m1 + "/vm.img");
  EXPECT_EQ(a.kind, "file");
  EXPECT_THAT(a.id, StartsWith("fs:0b5e7c1d2f4a4c399d8e6a7b8c9d0e1f:fh:"));
  EXPECT_EQ(Id(m2 + "/vm.img").id, a.id);
  umount2(m2.c_str(), MNT_DETACH);
  umount2(m1.c_str(), MNT_DETACH);
}

TEST_F(DiskIdentityTest, LoopDeviceAtAnOffsetIsAnotherDisk) {
  const std::string img = File("a.img", 1 << 20);
  absl::StatusOr<aliases::LoopDevice> loop = aliases::LoopDevice::Attach(img, 65536);
  ASSERT_TRUE(loop.ok()) << loop.status();
  DiskIdentity dev = Id(loop->path());
  EXPECT_EQ(dev.kind, "loop");
  EXPECT_THAT(dev.id, StartsWith(Id(img).id + ":loop:offset=65536"));
  ASSERT_TRUE(aliases::MknodAlias(loop->path(), dir_ + "/second-node").ok());
  EXPECT_EQ(Id(dir_ + "/second-node").id, dev.id);
  EXPECT_EQ(Id(dir_ + "/second-node").anchor, loop->path());
}

// Real partitions (a loop device with a partition table) are built by the
// contract suite's DiskAliasesAreOneResource, which runs where the kernel
// reads partition tables: the cluster lab's nodes. This machine's kernel
// reads none, so here the rule is checked on sysfs fixtures.
TEST_F(DiskIdentityTest, ScsiWwidMultipathAndPartitionsFromSysfs) {
  IdentityEnv env;
  env.sysfs = dir_ + "/sys";
  env.devfs = "/dev";
  const std::string sdb = FakeBlock(env.sysfs, "pci0/host2/target2:0:0/2:0:0:1/block/sdb", 8, 16,
                                    {{"device/wwid", "naa.6001405abcdef0123456789abcdef012"}});
  const std::string sdb1 = FakeBlock(env.sysfs, "pci0/host2/target2:0:0/2:0:0:1/block/sdb/sdb1",
                                     8, 17, {{"partition", "1"}, {"start", "2048"}, {"size", "8192"}});
  const std::string mpath = FakeBlock(env.sysfs, "virtual/block/dm-3", 253, 3,
                                      {{"dm/uuid", "mpath-36001405abcdef0123456789abcdef012"},
                                       {"dm/name", "mpatha"}});
  DiskIdentity disk = Id(sdb, env);
  EXPECT_EQ(disk.kind, "wwid");
  EXPECT_EQ(disk.id, "wwid:naa.6001405abcdef0123456789abcdef012");
  EXPECT_EQ(disk.anchor, "/dev/sdb");
  EXPECT_EQ(Id(mpath, env).id, disk.id) << "a path device and its multipath map are one disk";
  DiskIdentity part = Id(sdb1, env);
  EXPECT_EQ(part.kind, "partition");
  EXPECT_EQ(part.id, disk.id + ":part:start=2048:size=8192");
}

TEST_F(DiskIdentityTest, LvmNvmeAndVirtioSerialFromSysfs) {
  IdentityEnv env;
  env.sysfs = dir_ + "/sys";
  const std::string lv = FakeBlock(env.sysfs, "virtual/block/dm-0", 253, 0,
                                   {{"dm/uuid", "LVM-VGUUIDvguuid0LVUUIDlvuuid000000"},
                                    {"dm/name", "vg-lv"}});
  const std::string nvme = FakeBlock(env.sysfs, "pci0/nvme/nvme0/nvme0n1", 259, 0,
                                     {{"wwid", "eui.0025388b91b1f4c2"}});
  const std::string vdb = FakeBlock(env.sysfs, "pci0/virtio2/block/vdb", 254, 16,
                                    {{"serial", "lab-disk-7"}});
  EXPECT_EQ(Id(lv, env).id, "dm:LVM-VGUUIDvguuid0LVUUIDlvuuid000000");
  EXPECT_EQ(Id(lv, env).kind, "dm-uuid");
  EXPECT_EQ(Id(nvme, env).id, "wwid:eui.0025388b91b1f4c2");
  EXPECT_EQ(Id(vdb, env).id, "serial::lab-disk-7");
  EXPECT_EQ(Id(vdb, env).kind, "serial");
}

TEST_F(DiskIdentityTest, StorageThatSaysNothingFallsBackToTheKernelNameAndSaysWhy) {
  IdentityEnv env;
  env.sysfs = dir_ + "/sys";
  const std::string ubd = FakeBlock(env.sysfs, "virtual/block/ubdb", 98, 16, {});
  const std::string dm = FakeBlock(env.sysfs, "virtual/block/dm-5", 253, 5,
                                   {{"dm/name", "flakey0"}});
  DiskIdentity u = Id(ubd, env);
  EXPECT_TRUE(u.weak());
  EXPECT_EQ(u.id, "path:/dev/ubdb") << "every node of the device is one name, the kernel's";
  EXPECT_THAT(u.reason, HasSubstr("no WWID, serial"));
  DiskIdentity d = Id(dm, env);
  EXPECT_TRUE(d.weak());
  EXPECT_THAT(d.reason, HasSubstr("flakey0"));
  EXPECT_THAT(d.reason, HasSubstr("has no UUID"));
  // A device the sysfs does not know at all.
  const std::string stray = dir_ + "/stray";
  ASSERT_EQ(mknod(stray.c_str(), S_IFBLK | 0600, makedev(240, 77)), 0);
  EXPECT_TRUE(Id(stray, env).weak());
  EXPECT_THAT(Id(stray, env).reason, HasSubstr("240:77"));
}

TEST_F(DiskIdentityTest, MissingFileIsItsPathAndNotADiskIsRefused) {
  DiskIdentity m = Id(dir_ + "/not-yet.img");
  EXPECT_TRUE(m.weak());
  EXPECT_EQ(m.id, "path:" + dir_ + "/not-yet.img");
  EXPECT_THAT(m.reason, HasSubstr("does not exist"));
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<DiskIdentity> f = IdentifyDisk(fifo);
  EXPECT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(fifo));
}

TEST_F(DiskIdentityTest, HostileSysfsValuesStayOnePrintableLine) {
  IdentityEnv env;
  env.sysfs = dir_ + "/sys";
  const std::string odd = FakeBlock(env.sysfs, "virtual/block/sdz", 65, 160,
                                    {{"device/wwid", "t10.ATA  \x01:weird\xff name"}});
  DiskIdentity id = Id(odd, env);
  for (char c : id.id.substr(5)) {
    EXPECT_TRUE(c > 0x20 && c < 0x7f && c != ':') << "byte " << static_cast<int>(c);
  }
}

TEST(DiskIdentityNameTest, NeverEqualsAPathNameAndFitsTheLimit) {
  EXPECT_NE(DiskIdentityName("/img/a", 64), DiskResourceName("/img/a", 64));
  EXPECT_EQ(DiskIdentityName("fs:x:fh:1:00", 48).size(), 48u);
  EXPECT_EQ(DiskIdentityName("fs:x:fh:1:00", 64), DiskIdentityName("fs:x:fh:1:00", 64));
}

TEST_F(DiskIdentityTest, ResourceDiskNamesByIdentityOrByPath) {
  const std::string img = File("a.img");
  const std::string link = dir_ + "/link.img";
  ASSERT_EQ(::link(img.c_str(), link.c_str()), 0);
  Resource a = *Resource::Disk(img, "ls", 64);
  Resource b = *Resource::Disk(link, "ls", 64);
  EXPECT_EQ(a.name, b.name);
  EXPECT_NE(a.path, b.path);
  EXPECT_EQ(a.naming, DiskNaming::kIdentity);
  Resource old = *Resource::Disk(img, "ls", 64, DiskNaming::kPath);
  EXPECT_EQ(old.name, DiskResourceName(*CanonicalImagePath(img), 64));
  EXPECT_NE(old.name, a.name);
}

}  // namespace
}  // namespace latchkey
