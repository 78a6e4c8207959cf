#include "common/http_server.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "tests/common/http_get.h"

namespace tokenwatch::metrics {
namespace {

using ::testing::HasSubstr;
using testing::HttpGet;

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = std::make_shared<prometheus::Registry>();
    prometheus::BuildCounter()
        .Name("tokenwatch_test_total")
        .Help("A test counter.")
        .Register(*registry_)
        .Add({})
        .Increment(3);
    auto server = HttpServer::Start("127.0.0.1:0", registry_, &health_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
  }

  std::shared_ptr<prometheus::Registry> registry_;
  Health health_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(HttpServerTest, ReadyOnlyOnceProbesAttachAndInventoryLoads) {
  auto [status, body] = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(status, 503);
  EXPECT_THAT(body, HasSubstr("probes not attached"));

  health_.SetProbesAttached(true);
  std::tie(status, body) = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(status, 503);
  EXPECT_THAT(body, HasSubstr("token inventory not loaded"));

  health_.SetInventoryLoaded(true);
  std::tie(status, body) = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body, "ok\n");
}

TEST_F(HttpServerTest, NotReadyWhileTheInventoryCannotBeReadAndReadyAgainAfter) {
  health_.SetProbesAttached(true);
  health_.SetInventoryLoaded(true);
  health_.SetInventoryProblem("/var/lib/kubelet: No such file or directory");
  auto [status, body] = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(status, 503);
  EXPECT_THAT(body, HasSubstr("token inventory unreadable: /var/lib/kubelet: No such file"));

  health_.SetInventoryProblem("");
  EXPECT_EQ(HttpGet(server_->port(), "/readyz").first, 200);
}

TEST_F(HttpServerTest, AliveOnlyWhileTheEventLoopTurns) {
  auto [status, body] = HttpGet(server_->port(), "/healthz");
  EXPECT_EQ(status, 503);
  EXPECT_THAT(body, HasSubstr("event loop not started"));
  health_.Heartbeat();
  EXPECT_EQ(HttpGet(server_->port(), "/healthz").first, 200);
  EXPECT_THAT(health_.NotAliveReason(absl::ZeroDuration()), HasSubstr("event loop silent for"));
}

TEST_F(HttpServerTest, ServesTheRegistryInTheTextFormat) {
  auto [status, body] = HttpGet(server_->port(), "/metrics");
  EXPECT_EQ(status, 200);
  EXPECT_THAT(body, HasSubstr("# TYPE tokenwatch_test_total counter"));
  EXPECT_THAT(body, HasSubstr("tokenwatch_test_total 3"));
}

TEST(HttpServer, WithoutHealthServesMetricsOnlyFromEveryCollectable) {
  auto a = std::make_shared<prometheus::Registry>();
  auto b = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter().Name("a_total").Help("a").Register(*a).Add({}).Increment();
  prometheus::BuildCounter().Name("b_total").Help("b").Register(*b).Add({}).Increment(2);
  auto server = HttpServer::Start(
      "127.0.0.1:0", std::vector<std::shared_ptr<prometheus::Collectable>>{a, b}, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  auto [status, body] = HttpGet((*server)->port(), "/metrics");
  EXPECT_EQ(status, 200);
  EXPECT_THAT(body, HasSubstr("a_total 1"));
  EXPECT_THAT(body, HasSubstr("b_total 2"));
  EXPECT_EQ(HttpGet((*server)->port(), "/readyz").first, 404);
}

TEST(HttpServer, ABusyPortIsAnErrorNamingTheAddress) {
  Health health;
  auto first = HttpServer::Start("127.0.0.1:0", std::make_shared<prometheus::Registry>(), &health);
  ASSERT_TRUE(first.ok());
  std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = HttpServer::Start(taken, std::make_shared<prometheus::Registry>(), &health);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr(taken));
}

TEST(DirectoryProblem, NamesAMissingOrWrongKubeletRoot) {
  char tmpl[] = "/tmp/tw-dirproblem-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  EXPECT_EQ(DirectoryProblem(dir), "");

  std::string file = dir + "/file";
  std::ofstream(file) << "x";
  EXPECT_THAT(DirectoryProblem(file), HasSubstr("not a directory"));

  std::filesystem::remove_all(dir);
  EXPECT_THAT(DirectoryProblem(dir), HasSubstr("No such file or directory"));
}

}  // namespace
}  // namespace tokenwatch::metrics
