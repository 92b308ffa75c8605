// The /metrics endpoint over a real socket: what it serves (registry and scrape-time metrics in
// Prometheus's text format) and how it refuses a bad or taken address.
#include "metrics/metrics_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <link.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "metrics/scraped_metrics.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#if defined(PDSERVE_METRICS_TEST_CUBLASLT)
#include <cblas.h>
#include <cublasLt.h>
#endif

namespace pdserve::metrics {
namespace {

// The body of GET /metrics from 127.0.0.1:`port` (HTTP/1.0: the server closes when done).
std::string Scrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? response : response.substr(body + 4);
}

TEST(MetricsServer, ServesRegistryAndScrapeTimeMetrics) {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("pdserve_test_events_total")
      .Help("events")
      .Register(*registry)
      .Add({{"kind", "a"}})
      .Increment(3);
  auto scraped = std::make_shared<ScrapedMetrics>();
  int reads = 0;
  scraped->AddGauge("pdserve_test_depth", "read at scrape time",
                    [&reads] { return static_cast<double>(++reads); });
  scraped->AddCounter("pdserve_test_bytes_total", "a counter kept elsewhere", [] {
    return std::vector<ScrapedMetrics::Sample>{{{{"format", "gqa"}}, 1024.0}};
  });
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", {registry, scraped});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);

  const std::string first = Scrape((*server)->port());
  EXPECT_NE(first.find("pdserve_test_events_total{kind=\"a\"} 3"), std::string::npos) << first;
  EXPECT_NE(first.find("# TYPE pdserve_test_depth gauge"), std::string::npos) << first;
  EXPECT_NE(first.find("pdserve_test_depth 1"), std::string::npos) << first;
  EXPECT_NE(first.find("# TYPE pdserve_test_bytes_total counter"), std::string::npos) << first;
  EXPECT_NE(first.find("pdserve_test_bytes_total{format=\"gqa\"} 1024"), std::string::npos)
      << first;
  // Each scrape reads the gauge again.
  EXPECT_NE(Scrape((*server)->port()).find("pdserve_test_depth 2"), std::string::npos);
}

#if defined(PDSERVE_METRICS_TEST_CUBLASLT)
// Bytes of static thread-local storage of every object loaded now: glibc places it on each
// thread's stack.
size_t StaticTlsBytes() {
  size_t total = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          if (info->dlpi_phdr[i].p_type == PT_TLS) {
            *static_cast<size_t*>(data) += info->dlpi_phdr[i].p_memsz;
          }
        }
        return 0;
      },
      &total);
  return total;
}
#endif

// A GPU worker's process links OpenBLAS and cuBLAS(Lt), whose static TLS took more room than
// civetweb's 100 KiB thread stacks had: /metrics could not start there. This binary links both
// the same way (at start-up, not dlopen), so the scrape below runs on threads that carry it.
TEST(MetricsServer, ServesInAProcessThatLinksCublasLt) {
#if defined(PDSERVE_METRICS_TEST_CUBLASLT)
  std::printf("cuBLASLt %zu and OpenBLAS (%d threads) linked; static TLS: %zu KiB\n",
              cublasLtGetVersion(), openblas_get_num_threads(), StaticTlsBytes() >> 10);
  EXPECT_GT(StaticTlsBytes(), size_t{100} << 10);
#else
  GTEST_SKIP() << "built without CUDA: no cuBLASLt to link";
#endif
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildGauge().Name("pdserve_test_up").Help("up").Register(*registry).Add({}).Set(1);
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", {registry});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_NE(Scrape((*server)->port()).find("pdserve_test_up 1"), std::string::npos);
}

TEST(ScrapedMetrics, AGroupReadsOneSnapshotForAllItsFamilies) {
  ScrapedMetrics scraped;
  int reads = 0;
  scraped.AddGroup({{"pdserve_test_running", "running", prometheus::MetricType::Gauge},
                    {"pdserve_test_done_total", "done", prometheus::MetricType::Counter}},
                   [&reads] {
                     ++reads;
                     return std::vector<std::vector<ScrapedMetrics::Sample>>{
                         {{{}, 2.0}}, {{{{"stage", "decode"}}, 7.0}}};
                   });
  const std::vector<prometheus::MetricFamily> families = scraped.Collect();
  EXPECT_EQ(reads, 1);
  ASSERT_EQ(families.size(), 2u);
  EXPECT_EQ(families[0].name, "pdserve_test_running");
  ASSERT_EQ(families[0].metric.size(), 1u);
  EXPECT_EQ(families[0].metric[0].gauge.value, 2.0);
  EXPECT_EQ(families[1].type, prometheus::MetricType::Counter);
  ASSERT_EQ(families[1].metric.size(), 1u);
  EXPECT_EQ(families[1].metric[0].counter.value, 7.0);
  ASSERT_EQ(families[1].metric[0].label.size(), 1u);
  EXPECT_EQ(families[1].metric[0].label[0].value, "decode");
}

TEST(MetricsServer, RefusesABadOrTakenAddress) {
  for (const char* listen : {"", "9400", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"}) {
    EXPECT_EQ(MetricsServer::Start(listen, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << listen;
  }
  absl::StatusOr<std::unique_ptr<MetricsServer>> first = MetricsServer::Start("127.0.0.1:0", {});
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::Status taken =
      MetricsServer::Start("127.0.0.1:" + std::to_string((*first)->port()), {}).status();
  EXPECT_EQ(taken.code(), absl::StatusCode::kUnavailable) << taken;
  EXPECT_NE(taken.message().find("cannot serve /metrics"), std::string::npos) << taken;
}

}  // namespace
}  // namespace pdserve::metrics
