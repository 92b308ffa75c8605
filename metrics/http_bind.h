// Binding and running a cpp-httplib server the way every pdserve HTTP endpoint does (/metrics,
// the OpenAI API): a taken port is an error, never shared, and a server can be stopped at once.
#pragma once

#include <string>
#include <thread>

namespace httplib {
class Server;
}

namespace pdserve::metrics {

// Binds `http` to host:port (port 0: any free port) with SO_REUSEADDR only: httplib's default
// SO_REUSEPORT would let a second process bind a taken port and answer half its requests. Host
// may be an IPv6 literal in brackets. Returns the bound port, or -1.
int BindHttpServer(httplib::Server& http, std::string host, int port);

// Runs http.listen_after_bind() on a new thread and returns that thread once the server is
// running: httplib's stop() does nothing before then, so a server stopped right after it
// started would leave its thread in accept() forever (and its owner's join with it).
std::thread ListenInBackground(httplib::Server& http);

}  // namespace pdserve::metrics
