// The mutual-TLS flags every binary shares (for mains; libraries take rpc::TlsFiles).
#pragma once

#include "CLI/CLI.hpp"
#include "rpc/tls.h"

namespace pdserve::rpc {

// Declares --tls-cert, --tls-key and --tls-ca (for mains).
inline void AddTlsFlags(CLI::App& app, TlsFiles& files) {
  app.add_option("--tls-cert", files.cert,
                 "PEM certificate to present (mutual TLS on every gRPC connection)");
  app.add_option("--tls-key", files.key, "PEM private key of --tls-cert");
  app.add_option("--tls-ca", files.ca, "PEM CA bundle peers' certificates must chain to");
}

}  // namespace pdserve::rpc
