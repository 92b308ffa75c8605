// KV transfer throughput of the TCP transport between two processes over loopback, beside raw
// socket throughput measured in the same run. Prints figures; asserts none.
//
//   pdserve-bench-transfer [--tokens N] [--iters N] [--frame-kib N] [--configs DIR] [--no-tls]
//                          [--link cuda-ipc|nccl [--devices P,D]]
//
// With --link, both caches are in GPU memory (CUDA devices P and D, 0,0 by default) and the
// payloads cross on that payload link, the headers and acks on the TCP connection, as between
// GPU workers. The baseline is then the link's ceiling measured in the same run: one device copy
// of the request's bytes from device P to device D (cudaMemcpyPeer). Prints "no GPU: ..." and
// exits 0 without a usable device.
//
// The process forks: the child is the decode side (one KvReceiver + ReservedBlocksSink per
// format, and a raw-socket sink), the parent the prefill side (a source KvStore per format and
// one TcpKvTransport). For each format the parent alternates, `iters` times (more for smaller
// requests, so every format moves about as many bytes as the largest): a raw transfer
// (one length word, then the request's byte count with plain send() from one large buffer in
// pieces of the transport's frame size, received the same way into one large buffer, then a
// 1-byte reply: the transport's memory traffic without its protocol) and a transport
// transfer (every layer's frame for a prompt of N tokens, pushed with SendLayerFromStore, then
// Flush: checksums on both sides, header validation, writes into shuffled reserved blocks,
// per-frame acks), and the same transport transfer over mutual TLS (what --tls-* costs: AES-GCM
// on both sides; certificates made with the openssl tool for the run). All use the same socket
// options. Reported: median GB/s of each (1 GB = 1e9 bytes), the median of the back-to-back
// runs' ratios, and CPU seconds per GB of each process. Reserve/Take round trips on the
// control channel are not timed.
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#if PDSERVE_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "bench/cpu_report.h"
#include "decode_worker/reserved_blocks_sink.h"
#include "engine/kv_cache.h"
#include "engine/kv_format.h"
#include "engine/model_config.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/make_backend.h"
#include "prefill_worker/kv_layer_sender.h"
#include "rpc/tls.h"
#include "transport/device_kv_links.h"
#include "transport/kv_receiver.h"
#include "transport/socket_io.h"
#include "transport/tcp_kv_transport.h"
#include "transport/tls_session.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

// Where the caches live and how payloads cross: TCP between host caches, or a payload link
// between caches on CUDA devices.
struct LinkMode {
  KvTransportKind kind = KvTransportKind::kTcp;
  int prefill_device = 0;
  int decode_device = 0;
  bool gpu() const { return kind != KvTransportKind::kTcp; }
};

// A backend for one side's cache: a CPU one, or CUDA device `device`. Created after the fork
// (CUDA does not survive one).
absl::StatusOr<std::unique_ptr<Backend>> SideBackend(const LinkMode& mode, int device) {
  if (!mode.gpu()) return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(1));
  return MakeBackend({.device = Device::kCuda, .ordinal = device}, 1, BestCpuIsa());
}

struct BenchFormat {
  std::string label;  // e.g. "MHA llama-2-7b"
  KvFormat format;
};

// Control messages between the two processes (a socketpair), fixed-size structs.
enum class Op : uint32_t { kReserve = 1, kTake = 2, kCpu = 3, kQuit = 4 };
struct Command {
  Op op;
  uint32_t format;
  uint64_t value;  // tokens (kReserve) or reservation id (kTake)
};
struct TicketReply {
  uint64_t id;
  std::array<uint8_t, 16> secret;
  int32_t ok;
};
struct Ports {
  int32_t raw;
  int32_t kv[8];
  int32_t kv_tls[8];  // the same sinks behind a mutual-TLS receiver
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "transfer bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + std::string(s.message()));
}

template <typename T>
void Put(int fd, const T& v) {
  Check(net::WriteFull(fd, &v, sizeof(v)), "control write");
}
template <typename T>
T Take(int fd) {
  T v;
  Check(net::ReadFull(fd, &v, sizeof(v)), "control read");
  return v;
}

// CPU time (user + system, every thread) this process has used.
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// Pseudo-random bytes, fast enough for GiB of KV; through a host buffer where the pools are in
// device memory.
void FillStore(KvStore& store, Backend& backend, uint64_t seed) {
  const KvFormat& f = store.format();
  std::vector<uint64_t> host;
  for (int64_t l = 0; l < f.num_layers; ++l) {
    for (Tensor* t : {&store.k(l), f.is_mla() ? nullptr : &store.v(l)}) {
      if (t == nullptr) continue;
      const bool on_host = t->device() == Device::kCpu;
      if (!on_host) host.resize(t->bytes() / 8);
      uint64_t* p = on_host ? static_cast<uint64_t*>(t->data()) : host.data();
      for (size_t i = 0; i < t->bytes() / 8; ++i) {
        seed += 0x9E3779B97F4A7C15ULL;
        uint64_t z = seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        p[i] = z ^ (z >> 27);
      }
      if (!on_host) backend.CopyFromHost(host.data(), *t);
    }
  }
}

// Takes every block and gives them back shuffled, so a sequence's blocks are scattered.
void ShufflePool(KvBlockPool& pool) {
  auto all = pool.Allocate(pool.num_blocks());
  if (!all.ok()) Die("shuffling the pool");
  std::srand(7);
  for (size_t i = all->size(); i > 1; --i) std::swap((*all)[i - 1], (*all)[std::rand() % i]);
  Check(pool.Release(*all), "release");
}

// The raw-socket sink: length word, then that many bytes into one large buffer, read in pieces of
// `chunk` bytes (the transport's frame size) at successive offsets, then a reply.
void RawServe(net::Fd listener, uint64_t max_bytes, uint64_t chunk_bytes) {
  const int fd = ::accept(listener.get(), nullptr, nullptr);
  if (fd < 0) Die("raw accept");
  net::Fd conn(fd);
  std::vector<uint8_t> buffer(max_bytes);
  for (;;) {
    uint64_t n = 0;
    if (!net::ReadFull(fd, &n, sizeof(n)).ok() || n == 0) return;
    for (uint64_t done = 0; done < n;) {
      const uint64_t at = done % buffer.size();
      const size_t chunk =
          static_cast<size_t>(std::min<uint64_t>({n - done, chunk_bytes, buffer.size() - at}));
      Check(net::ReadFull(fd, buffer.data() + at, chunk), "raw recv");
      done += chunk;
    }
    const uint8_t ok = 1;
    Check(net::WriteFull(fd, &ok, 1), "raw reply");
  }
}

// The decode side: serves every format until told to quit.
// With a GPU link mode the caches are on mode.decode_device and frames arrive on the link; no
// raw-socket sink runs (ports.raw 0), and a device that cannot be used sends ports.raw -1.
void Child(int control, const std::vector<BenchFormat>& formats, int64_t tokens, uint64_t max_bytes,
           uint64_t chunk_bytes, std::shared_ptr<const net::TlsContext> tls, const LinkMode& mode) {
  Ports ports{};
  absl::StatusOr<std::unique_ptr<Backend>> made = SideBackend(mode, mode.decode_device);
  absl::StatusOr<std::shared_ptr<KvLinkFactory>> link =
      MakeKvLinkFactory(mode.kind, mode.decode_device);
  if (!made.ok() || !link.ok()) {
    ports.raw = -1;
    Put(control, ports);
    while (Take<Command>(control).op != Op::kQuit) {
    }
    return;
  }
  Backend& backend = **made;
  std::vector<std::unique_ptr<KvStore>> stores;
  std::vector<std::unique_ptr<ReservedBlocksSink>> sinks;
  std::vector<std::unique_ptr<KvReceiver>> receivers;
  for (size_t i = 0; i < formats.size(); ++i) {
    const KvFormat& f = formats[i].format;
    stores.push_back(std::make_unique<KvStore>(backend, f, KvStore::BlocksFor(f, tokens) + 8));
    FillStore(*stores.back(), backend, 1000 + i);  // faults every page in before timing
    ShufflePool(stores.back()->pool());
    sinks.push_back(std::make_unique<ReservedBlocksSink>(*stores.back()));
    for (bool encrypted : {false, true}) {
      if (encrypted && tls == nullptr) continue;  // also the GPU runs: main gives them none
      KvReceiver::Options options;
      options.host = "127.0.0.1";
      if (encrypted) options.tls = tls;
      if (*link != nullptr) options.links = {*link};
      auto r = KvReceiver::Start(*sinks.back(), std::move(options));
      if (!r.ok()) Die(std::string(r.status().message()));
      (encrypted ? ports.kv_tls : ports.kv)[i] = r.value()->port();
      receivers.push_back(*std::move(r));
    }
  }
  std::thread raw;
  if (!mode.gpu()) {
    auto listener = net::Listen({"127.0.0.1", 0});
    if (!listener.ok()) Die(std::string(listener.status().message()));
    ports.raw = listener->second;
    raw = std::thread(RawServe, std::move(listener->first), max_bytes, chunk_bytes);
  }
  Put(control, ports);
  std::map<uint64_t, ReservationSecret> secrets;  // of the reservations handed out
  for (;;) {
    const auto cmd = Take<Command>(control);
    if (cmd.op == Op::kQuit) break;
    if (cmd.op == Op::kCpu) {
      Put(control, CpuSeconds());
      continue;
    }
    ReservedBlocksSink& sink = *sinks[cmd.format];
    if (cmd.op == Op::kReserve) {
      auto t = sink.Reserve(0, static_cast<int64_t>(cmd.value), static_cast<int64_t>(cmd.value),
                            std::chrono::minutes(1));
      TicketReply reply{};
      reply.ok = t.ok();
      if (t.ok()) {
        reply.id = t->id;
        reply.secret = t->secret.bytes;
        secrets[t->id] = t->secret;
      }
      Put(control, reply);
    } else {
      // The Flush saw every ack, so the reservation is complete: take its blocks like the
      // decode worker would, and give them back.
      int32_t ok = sink.WaitComplete(cmd.value, Clock::now()).ok();
      auto taken = sink.Take(cmd.value, secrets[cmd.value]);  // dropping it frees the blocks
      secrets.erase(cmd.value);
      ok = ok && taken.ok();
      Put(control, ok);
    }
  }
  if (raw.joinable()) raw.join();
  for (auto& r : receivers) r->Stop();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Seconds for one raw transfer of `bytes` from `buffer`, written in pieces of `chunk_bytes` (the
// transport's frame size) from successive offsets: the same memory traffic as the transport,
// none of its protocol.
double RawOnce(int fd, const std::vector<uint8_t>& buffer, uint64_t bytes, uint64_t chunk_bytes) {
  const auto start = Clock::now();
  Check(net::WriteFull(fd, &bytes, sizeof(bytes)), "raw send");
  for (uint64_t done = 0; done < bytes;) {
    const uint64_t at = done % buffer.size();
    const size_t chunk =
        static_cast<size_t>(std::min<uint64_t>({bytes - done, chunk_bytes, buffer.size() - at}));
    Check(net::WriteFull(fd, buffer.data() + at, chunk), "raw send");
    done += chunk;
  }
  uint8_t ok;
  Check(net::ReadFull(fd, &ok, 1), "raw reply");
  return std::chrono::duration<double>(Clock::now() - start).count();
}

#if PDSERVE_WITH_CUDA
// The GPU runs' baseline: `bytes` copied from device `from` to device `to` in one
// cudaMemcpyPeer, what the link could move at best.
class DeviceCopy {
 public:
  DeviceCopy(const LinkMode& mode, uint64_t bytes)
      : from_(mode.prefill_device), to_(mode.decode_device) {
    if (cudaSetDevice(from_) != cudaSuccess || cudaMalloc(&src_, bytes) != cudaSuccess ||
        cudaSetDevice(to_) != cudaSuccess || cudaMalloc(&dst_, bytes) != cudaSuccess) {
      Die("cudaMalloc for the device-copy baseline");
    }
  }
  ~DeviceCopy() {
    (void)cudaFree(src_);
    (void)cudaFree(dst_);
  }
  double Once(uint64_t bytes) {
    const auto start = Clock::now();
    if (cudaMemcpyPeer(dst_, to_, src_, from_, bytes) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess) {
      Die("cudaMemcpyPeer");
    }
    return std::chrono::duration<double>(Clock::now() - start).count();
  }

 private:
  const int from_, to_;
  void* src_ = nullptr;
  void* dst_ = nullptr;
};
#endif

// Seconds for one request's KV through the transport.
double TransportOnce(int control, uint32_t index, int port, KvStore& src,
                     const std::vector<int32_t>& table, int64_t tokens, TcpKvTransport& transport,
                     uint64_t* wire_bytes, int64_t* frames) {
  Put(control, Command{Op::kReserve, index, static_cast<uint64_t>(tokens)});
  const auto ticket = Take<TicketReply>(control);
  if (!ticket.ok) Die("reserve failed in the receiver");
  KvDestination dest{"127.0.0.1:" + std::to_string(port), ticket.id, {}, 0};
  dest.secret.bytes = ticket.secret;
  const auto start = Clock::now();
  for (int64_t l = 0; l < src.format().num_layers; ++l) {
    Check(SendLayerFromStore(transport, dest, src, l, table, 0, tokens), "SendLayer");
  }
  auto stats = transport.Flush(dest, Clock::now() + std::chrono::seconds(60));
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Check(stats.status(), "Flush");
  *wire_bytes = stats->wire_bytes;
  *frames = stats->frames;
  Put(control, Command{Op::kTake, index, ticket.id});
  if (!Take<int32_t>(control)) Die("the receiver did not see a complete reservation");
  return seconds;
}

// A CA and a certificate it signed for 127.0.0.1, made with the openssl tool in a fresh
// temporary directory; the server and client contexts of a mutual-TLS pair.
std::pair<std::shared_ptr<const net::TlsContext>, std::shared_ptr<const net::TlsContext>>
MakeTlsContexts() {
  char dir_template[] = "/tmp/pdserve-bench-tls-XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  if (dir == nullptr) Die("mkdtemp");
  const std::string d = dir;
  absl::StatusOr<rpc::TlsFiles> files = rpc::MakeThrowawayCertificates(d, "node", "IP:127.0.0.1");
  if (!files.ok()) {
    Die(std::string(files.status().message()) +
        " (scripts/install-deps.sh installs openssl; --no-tls skips the TLS runs)");
  }
  auto context = [&](net::TlsContext::Role role) {
    auto c = net::TlsContext::FromFiles(files->cert, files->key, files->ca, role);
    if (!c.ok()) Die(std::string(c.status().message()));
    return *c;
  };
  auto pair = std::make_pair(context(net::TlsContext::Role::kServer),
                             context(net::TlsContext::Role::kClient));
  (void)std::system(("rm -rf " + d).c_str());
  return pair;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  using namespace pdserve;
  int64_t tokens = 2048;
  int iters = 5;
  std::string configs = PDSERVE_DEFAULT_CONFIGS_DIR;
  TcpKvTransport::Options options;
  bool with_tls = true;
  LinkMode mode;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
      tokens = std::atoll(argv[++i]);
    } else if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--frame-kib") == 0 && i + 1 < argc) {
      options.frame_bytes = std::max<uint64_t>(1, std::strtoull(argv[++i], nullptr, 10)) << 10;
    } else if (std::strcmp(argv[i], "--configs") == 0 && i + 1 < argc) {
      configs = argv[++i];
    } else if (std::strcmp(argv[i], "--no-tls") == 0) {
      with_tls = false;
    } else if (std::strcmp(argv[i], "--link") == 0 && i + 1 < argc) {
      absl::StatusOr<KvTransportKind> kind = ParseKvTransportKind(argv[++i]);
      if (!kind.ok() || *kind == KvTransportKind::kTcp) Die("--link takes cuda-ipc or nccl");
      mode.kind = *kind;
    } else if (std::strcmp(argv[i], "--devices") == 0 && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d,%d", &mode.prefill_device, &mode.decode_device) != 2) {
        Die("--devices takes P,D: the prefill and decode sides' CUDA devices");
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--tokens N] [--iters N] [--frame-kib N] [--configs DIR] "
                   "[--no-tls] [--link cuda-ipc|nccl [--devices P,D]]\n",
                   argv[0]);
      return 2;
    }
  }
  if (mode.gpu()) with_tls = false;  // the link's bytes are not encrypted either way
#if !PDSERVE_WITH_CUDA
  if (mode.gpu()) {
    std::printf("no GPU: this build has no CUDA\n");
    return 0;
  }
#endif
  if (tokens <= 0) Die("--tokens must be positive");
  std::vector<BenchFormat> formats;
  for (const char* name : {"llama-2-7b", "llama-3-8b", "deepseek-v3"}) {
    auto config = LoadHfConfig(configs + "/real/" + name + ".json");
    if (!config.ok()) Die(std::string(config.status().message()));
    const KvFormat f = KvFormat::FromConfig(*config, DType::kBF16);
    formats.push_back({f.KindName() + " " + name, f});
  }
  uint64_t max_bytes = 0;
  for (const auto& b : formats) {
    max_bytes = std::max<uint64_t>(max_bytes, b.format.bytes_per_token() * tokens);
  }

  // Printed before the fork, so the child does not inherit it unflushed. Kernels: the source
  // stores' backend (the best level); KV checksums: libxxhash's own dispatch.
  std::printf("%s\n", bench::BuildLine(BestCpuIsa()).c_str());
  std::fflush(stdout);

  std::shared_ptr<const net::TlsContext> tls_server, tls_client;
  if (with_tls) std::tie(tls_server, tls_client) = MakeTlsContexts();

  int control_pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, control_pair) != 0) Die("socketpair");
  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    ::close(control_pair[0]);
    Child(control_pair[1], formats, tokens, max_bytes, options.frame_bytes, tls_server, mode);
    std::_Exit(0);
  }
  ::close(control_pair[1]);
  const int control = control_pair[0];

  absl::StatusOr<std::unique_ptr<Backend>> made = SideBackend(mode, mode.prefill_device);
  absl::StatusOr<std::shared_ptr<KvLinkFactory>> link =
      MakeKvLinkFactory(mode.kind, mode.prefill_device);
  const auto ports = Take<Ports>(control);
  if (!made.ok() || !link.ok() || ports.raw < 0) {
    std::printf("no GPU: %s\n", !made.ok()   ? std::string(made.status().message()).c_str()
                                : !link.ok() ? std::string(link.status().message()).c_str()
                                             : "the decode side could not use its device");
    Put(control, Command{Op::kQuit, 0, 0});
    waitpid(child, nullptr, 0);
    return 0;
  }
  Backend& backend = **made;
  options.link = *link;
  std::vector<std::unique_ptr<KvStore>> sources;
  std::vector<std::vector<int32_t>> tables;
  for (const auto& b : formats) {
    sources.push_back(
        std::make_unique<KvStore>(backend, b.format, KvStore::BlocksFor(b.format, tokens) + 8));
    FillStore(*sources.back(), backend, 1);
    ShufflePool(sources.back()->pool());
    auto t = sources.back()->pool().Allocate(KvStore::BlocksFor(b.format, tokens));
    if (!t.ok()) Die("allocate");
    tables.push_back(*t);
  }
  backend.Synchronize();  // the fills have landed before a link reads the pools
  // The baseline: raw socket sends of the same bytes, or (GPU) one device copy of them.
  std::vector<uint8_t> raw_buffer;
  absl::StatusOr<net::Fd> raw = net::Fd();
#if PDSERVE_WITH_CUDA
  std::unique_ptr<DeviceCopy> device_copy;
  if (mode.gpu()) device_copy = std::make_unique<DeviceCopy>(mode, max_bytes);
#endif
  if (!mode.gpu()) {
    raw_buffer.assign(max_bytes, 0x5A);
    raw = net::Connect({"127.0.0.1", ports.raw}, std::chrono::seconds(5));
    if (!raw.ok()) Die(std::string(raw.status().message()));
  }
  auto transport = std::make_unique<TcpKvTransport>(options);
  TcpKvTransport::Options tls_options = options;
  tls_options.tls = tls_client;
  auto tls_transport = with_tls ? std::make_unique<TcpKvTransport>(tls_options) : nullptr;

  if (mode.gpu()) {
    std::printf(
        "KV payloads over the %s payload link, CUDA device %d to device %d (headers and acks "
        "on loopback TCP); baseline \"raw\": one cudaMemcpyPeer of the same bytes, measured "
        "alternately (the raw and tls CPU columns do not apply)\n",
        std::string(KvTransportName(mode.kind)).c_str(), mode.prefill_device, mode.decode_device);
  }
  std::printf(
      "KV transfer over loopback TCP between two processes: %lld-token prompts, bf16, frames "
      "of up to %llu KiB, %d+ iterations (medians)\n"
      "machine: %u hardware threads, load average %s at start (other builds may share the "
      "cores)\n\n",
      static_cast<long long>(tokens), static_cast<unsigned long long>(options.frame_bytes >> 10),
      iters, std::thread::hardware_concurrency(), LoadAverage().c_str());
  std::printf("%-20s %6s %10s %11s %9s %9s %9s %7s %9s %7s   %-11s  %-11s  %-11s\n", "", "", "", "",
              "", "", "", "", "", "", "raw CPU s/GB", "kv CPU s/GB", "tls CPU s/GB");
  std::printf("%-20s %6s %10s %11s %9s %9s %9s %7s %9s %7s   %5s %5s  %5s %5s  %5s %5s\n", "format",
              "frames", "layer MiB", "request MiB", "hdr B/req", "raw GB/s", "kv GB/s", "kv/raw",
              "tls GB/s", "tls/kv", "send", "recv", "send", "recv", "send", "recv");
  auto child_cpu = [&] {
    Put(control, Command{Op::kCpu, 0, 0});
    return Take<double>(control);
  };
  // Runs `once` and adds the seconds it took to `times` and the CPU seconds each process used.
  struct Series {
    std::vector<double> seconds;
    double cpu_send = 0, cpu_recv = 0;
  };
  auto timed = [&](Series& series, const std::function<double()>& once) {
    const double send0 = CpuSeconds(), recv0 = child_cpu();
    series.seconds.push_back(once());
    series.cpu_send += CpuSeconds() - send0;
    series.cpu_recv += child_cpu() - recv0;
  };
  for (uint32_t i = 0; i < formats.size(); ++i) {
    const KvFormat& f = formats[i].format;
    const uint64_t kv_bytes = static_cast<uint64_t>(f.bytes_per_token() * tokens);
    uint64_t wire = 0;
    int64_t frames = 0;
    auto raw_once = [&] {
#if PDSERVE_WITH_CUDA
      if (mode.gpu()) return device_copy->Once(kv_bytes);
#endif
      return RawOnce(raw->get(), raw_buffer, kv_bytes, options.frame_bytes);
    };
    auto kv_once = [&] {
      return TransportOnce(control, i, ports.kv[i], *sources[i], tables[i], tokens, *transport,
                           &wire, &frames);
    };
    auto tls_once = [&] {
      return TransportOnce(control, i, ports.kv_tls[i], *sources[i], tables[i], tokens,
                           *tls_transport, &wire, &frames);
    };
    // One warm-up of each, then alternate so load changes hit all alike.
    (void)raw_once();
    (void)kv_once();
    if (with_tls) (void)tls_once();
    Series raw_series, kv_series, tls_series;
    const int reps = iters * static_cast<int>(std::max<uint64_t>(1, max_bytes / kv_bytes));
    for (int r = 0; r < reps; ++r) {
      timed(raw_series, raw_once);
      timed(kv_series, kv_once);
      if (with_tls) timed(tls_series, tls_once);
    }
    auto gbs = [&](const Series& series) {
      return series.seconds.empty() ? 0.0
                                    : static_cast<double>(kv_bytes) / Median(series.seconds) / 1e9;
    };
    // The ratio of each back-to-back pair, then their median: load that drifts over seconds
    // (this machine is shared) cancels within a pair.
    auto ratio = [&](const Series& slow, const Series& fast) {
      if (slow.seconds.empty()) return 0.0;
      std::vector<double> ratios;
      for (int r = 0; r < reps; ++r) ratios.push_back(fast.seconds[r] / slow.seconds[r]);
      return Median(ratios);
    };
    const double gb = static_cast<double>(kv_bytes) * reps / 1e9;
    std::printf(
        "%-20s %6lld %10.2f %11.1f %9llu %9.2f %9.2f %7.2f %9.2f %7.2f   %5.2f %5.2f  %5.2f "
        "%5.2f  %5.2f %5.2f\n",
        formats[i].label.c_str(), static_cast<long long>(frames),
        static_cast<double>(f.bytes_per_token_per_layer() * tokens) / (1 << 20),
        static_cast<double>(kv_bytes) / (1 << 20), static_cast<unsigned long long>(wire - kv_bytes),
        gbs(raw_series), gbs(kv_series), ratio(kv_series, raw_series), gbs(tls_series),
        ratio(tls_series, kv_series), raw_series.cpu_send / gb, raw_series.cpu_recv / gb,
        kv_series.cpu_send / gb, kv_series.cpu_recv / gb, tls_series.cpu_send / gb,
        tls_series.cpu_recv / gb);
  }
  std::printf(
      "\nkv GB/s counts KV payload bytes only (headers add the hdr B/req column to the wire); "
      "goal: kv/raw >= 0.9.\nkv/raw, tls/kv: medians over iterations of the ratio of back-to-back "
      "runs' seconds (raw/kv, kv/tls).\ntls: the same transport over mutual TLS 1.3 (AES-GCM, "
      "what --tls-* costs the KV transfer; --kv-plaintext avoids it).\nCPU s/GB: CPU time of the "
      "sending and receiving process per GB "
      "moved (less sensitive to other load than GB/s).\n");
  transport.reset();  // close the KV connections before the receivers go away
  tls_transport.reset();
  Put(control, Command{Op::kQuit, 0, 0});
  uint64_t zero = 0;
  if (!mode.gpu()) (void)net::WriteFull(raw->get(), &zero, sizeof(zero));
  int status = 0;
  waitpid(child, &status, 0);
  return 0;
}
