// Mutual TLS for pdserve's gRPC servers and channels, from PEM files. With no file given
// everything stays plaintext (the local default); with TLS every process presents its
// certificate and accepts only peers whose certificate chains to the CA bundle, in both
// directions (router <-> workers, client -> router).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace pdserve::rpc {

struct TlsFiles {
  std::string cert;  // PEM certificate this process presents
  std::string key;   // its PEM private key
  std::string ca;    // PEM CA bundle the peers' certificates must chain to
  bool enabled() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

// Plaintext without TLS files; otherwise a server that requires and verifies client
// certificates. INVALID_ARGUMENT when only some of the three files are given, NOT_FOUND when
// one cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);
// Plaintext without TLS files; otherwise a channel that verifies the server against the CA
// and presents this process's certificate. Errors as MakeServerCredentials.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files);

// A throwaway CA and one certificate it signed (usable by servers and clients, naming
// `subject_alt_name` in openssl's syntax), written as `name`.pem, `name`.key and `name`-ca.pem
// into `dir` with the openssl command-line tool: for tests and benchmarks, never production.
// INTERNAL, with the command, when openssl fails (scripts/install-deps.sh installs it).
absl::StatusOr<TlsFiles> MakeThrowawayCertificates(
    const std::string& dir, const std::string& name,
    const std::string& subject_alt_name = "DNS:localhost,IP:127.0.0.1");

}  // namespace pdserve::rpc
