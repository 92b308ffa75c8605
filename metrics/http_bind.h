// Binding a cpp-httplib server the way every pdserve HTTP endpoint does (/metrics, the OpenAI
// API): a taken port is an error, never shared.
#pragma once

#include <string>

namespace httplib {
class Server;
}

namespace pdserve::metrics {

// Binds `http` to host:port (port 0: any free port) with SO_REUSEADDR only: httplib's default
// SO_REUSEPORT would let a second process bind a taken port and answer half its requests. Host
// may be an IPv6 literal in brackets. Returns the bound port, or -1.
int BindHttpServer(httplib::Server& http, std::string host, int port);

}  // namespace pdserve::metrics
