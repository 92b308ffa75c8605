// rpc::ChildProcess and rpc::WaitForPortFile: waits that wake on the port file's arrival, on the
// child's stop and on its exit. The children are shells; they do any sleeping, never the test.
#include "rpc/child_process.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace pdserve::rpc {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// `/bin/sh -c script`, its output in `dir`/shell.log.
std::unique_ptr<ChildProcess> Shell(const std::string& dir, const std::string& script) {
  return std::make_unique<ChildProcess>(std::vector<std::string>{"/bin/sh", "-c", script},
                                        dir + "/shell.log");
}

TEST(WaitForPortFile, SeesAPortRenamedIntoPlaceAfterADelay) {
  const std::string dir = testing_util::FreshDir("port_renamed");
  const std::string port_file = dir + "/server.port";
  // As rpc::Server::WritePortFile does it: a temporary file renamed into place.
  auto child = Shell(dir, absl::StrCat("sleep 0.3; echo 4242 > '", port_file, ".tmp'; mv '",
                                       port_file, ".tmp' '", port_file, "'; exec sleep 60"));
  const absl::StatusOr<int> port = WaitForPortFile(port_file, *child, seconds(60));
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(*port, 4242);
  EXPECT_TRUE(child->running());
}

TEST(WaitForPortFile, SeesAPortWrittenInPlaceAfterOtherFiles) {
  const std::string dir = testing_util::FreshDir("port_in_place");
  const std::string port_file = dir + "/server.port";
  // Another file in the directory first: its event must not end the wait.
  auto child =
      Shell(dir, absl::StrCat("sleep 0.2; echo 1 > '", dir, "/other'; sleep 0.2; echo 4243 > '",
                              port_file, "'; exec sleep 60"));
  const absl::StatusOr<int> port = WaitForPortFile(port_file, *child, seconds(60));
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(*port, 4243);
}

TEST(WaitForPortFile, ReadsAPortThatIsAlreadyThere) {
  const std::string dir = testing_util::FreshDir("port_present");
  const std::string port_file = dir + "/server.port";
  std::ofstream(port_file) << "4244\n";
  auto child = Shell(dir, "exec sleep 60");
  const absl::StatusOr<int> port = WaitForPortFile(port_file, *child, seconds(60));
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(*port, 4244);
}

TEST(WaitForPortFile, ChildExitingWithoutAPortIsUnavailableNotATimeout) {
  const std::string dir = testing_util::FreshDir("port_exit");
  auto child = Shell(dir, "sleep 0.2; echo 'no model here' >&2; exit 3");
  // A minute to wait: only the child's exit can end this wait early, with UNAVAILABLE.
  const absl::StatusOr<int> port = WaitForPortFile(dir + "/server.port", *child, seconds(60));
  ASSERT_EQ(port.status().code(), absl::StatusCode::kUnavailable) << port.status();
  EXPECT_NE(port.status().message().find("exited with code 3"), std::string::npos) << port.status();
  EXPECT_NE(child->LogTail().find("no model here"), std::string::npos);
}

TEST(WaitForPortFile, SilentChildIsDeadlineExceededAndKeepsRunning) {
  const std::string dir = testing_util::FreshDir("port_timeout");
  auto child = Shell(dir, "exec sleep 60");
  const absl::StatusOr<int> port = WaitForPortFile(dir + "/server.port", *child, milliseconds(200));
  EXPECT_EQ(port.status().code(), absl::StatusCode::kDeadlineExceeded) << port.status();
  EXPECT_TRUE(child->running());
}

TEST(WaitForPortFile, MissingDirectoryIsNotFound) {
  const std::string dir = testing_util::FreshDir("port_no_dir");
  auto child = Shell(dir, "exec sleep 60");
  const absl::StatusOr<int> port =
      WaitForPortFile(dir + "/absent/server.port", *child, seconds(60));
  EXPECT_EQ(port.status().code(), absl::StatusCode::kNotFound) << port.status();
}

TEST(ChildProcess, WaitReturnsTheExitStatus) {
  const std::string dir = testing_util::FreshDir("child_exit");
  auto child = Shell(dir, "sleep 0.1; exit 5");
  const int status = child->Wait(seconds(60));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 5);
  EXPECT_FALSE(child->running());
  EXPECT_EQ(child->ExitDescription(), "exited with code 5");
}

TEST(ChildProcess, WaitTimesOutOnARunningChildAndSeesItsKill) {
  const std::string dir = testing_util::FreshDir("child_kill");
  auto child = Shell(dir, "exec sleep 60");
  EXPECT_EQ(child->Wait(milliseconds(50)), -1);
  EXPECT_EQ(child->ExitDescription(), "running");
  child->Signal(SIGKILL);
  const int status = child->Wait(seconds(60));
  ASSERT_TRUE(WIFSIGNALED(status)) << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_NE(child->ExitDescription().find("signal 9"), std::string::npos);
}

TEST(ChildProcess, ChildInheritsTheEnvironmentWithTheGivenEntriesOverIt) {
  const std::string dir = testing_util::FreshDir("child_env");
  setenv("PDSERVE_CHILD_TEST_KEPT", "kept", 1);
  setenv("PDSERVE_CHILD_TEST_REPLACED", "old", 1);
  ChildProcess child({"/bin/sh", "-c",
                      "echo \"$PDSERVE_CHILD_TEST_KEPT $PDSERVE_CHILD_TEST_REPLACED "
                      "$PDSERVE_CHILD_TEST_ADDED\"; env | grep -c '^PDSERVE_CHILD_TEST_REPLACED='"},
                     dir + "/shell.log",
                     {"PDSERVE_CHILD_TEST_REPLACED=new", "PDSERVE_CHILD_TEST_ADDED=added"});
  ASSERT_EQ(child.Wait(seconds(60)), 0) << child.LogTail();
  EXPECT_EQ(child.LogTail(), "kept new added\n1\n");  // replaced, not listed twice
}

// WaitStopped's answer (stopped: true, exited: false) within a minute; a timeout fails the test.
bool StoppedNotExited(ChildProcess& child) {
  const absl::StatusOr<bool> stopped = child.WaitStopped(seconds(60));
  EXPECT_TRUE(stopped.ok()) << stopped.status();
  return stopped.value_or(false);
}

TEST(ChildProcess, WaitStoppedSeesTheChildStopItself) {
  const std::string dir = testing_util::FreshDir("child_stop");
  auto child = Shell(dir, "sleep 0.2; kill -STOP $$; exit 6");
  ASSERT_TRUE(StoppedNotExited(*child));
  EXPECT_TRUE(child->running());
  child->Signal(SIGCONT);
  const int status = child->Wait(seconds(60));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 6);  // the stop report did not take the exit status's place
}

TEST(ChildProcess, WaitStoppedSeesAStopAgainAfterAContinue) {
  const std::string dir = testing_util::FreshDir("child_stop_twice");
  auto child = Shell(dir, "kill -STOP $$; kill -STOP $$; exit 0");
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(StoppedNotExited(*child)) << "round " << round;
    child->Signal(SIGCONT);
  }
  EXPECT_EQ(child->Wait(seconds(60)), 0) << child->ExitDescription();
}

TEST(ChildProcess, WaitStoppedSeesAnExitInsteadOfAStop) {
  const std::string dir = testing_util::FreshDir("child_stop_exit");
  auto child = Shell(dir, "sleep 0.1; exit 4");
  EXPECT_FALSE(StoppedNotExited(*child));
  EXPECT_EQ(child->ExitDescription(), "exited with code 4");
}

TEST(ChildProcess, WaitStoppedTimesOutOnARunningChild) {
  const std::string dir = testing_util::FreshDir("child_stop_timeout");
  auto child = Shell(dir, "exec sleep 60");
  const absl::StatusOr<bool> stopped = child->WaitStopped(milliseconds(100));
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kDeadlineExceeded) << stopped.status();
  EXPECT_TRUE(child->running());
  // Destruction kills the child, which also ends the watcher still waiting for a stop.
}

TEST(ChildProcess, WaitAnyStoppedReturnsTheChildThatStopped) {
  const std::string dir = testing_util::FreshDir("child_stop_any");
  auto busy = Shell(dir, "exec sleep 60");
  auto stopping = Shell(dir, "sleep 0.2; kill -STOP $$; exit 0");
  ChildProcess* const both[] = {busy.get(), stopping.get()};
  const absl::StatusOr<ChildProcess*> first = ChildProcess::WaitAnyStopped(both, seconds(60));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, stopping.get());
  EXPECT_TRUE(stopping->running());
  EXPECT_TRUE(busy->running());
}

}  // namespace
}  // namespace pdserve::rpc
