#include "metrics/http_bind.h"

#include <sys/socket.h>

#include <atomic>
#include <memory>

#include "httplib.h"

namespace pdserve::metrics {

int BindHttpServer(httplib::Server& http, std::string host, int port) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  http.set_socket_options([](int sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  if (port == 0) return http.bind_to_any_port(host);
  return http.bind_to_port(host, port) ? port : -1;
}

std::thread ListenInBackground(httplib::Server& http) {
  auto ended = std::make_shared<std::atomic<bool>>(false);
  std::thread thread([&http, ended] {
    http.listen_after_bind();
    ended->store(true);
  });
  // A start-up handshake of microseconds; httplib offers nothing to wait on.
  while (!http.is_running() && !ended->load()) std::this_thread::yield();
  return thread;
}

}  // namespace pdserve::metrics
