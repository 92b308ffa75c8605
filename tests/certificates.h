// Certificates for the mutual-TLS tests: rpc::MakeThrowawayCertificates, failing the test
// when openssl does.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "rpc/tls.h"

namespace pdserve::testing_util {

inline rpc::TlsFiles MakeCertificates(
    const std::string& dir, const std::string& name,
    const std::string& subject_alt_name = "DNS:localhost,IP:127.0.0.1") {
  absl::StatusOr<rpc::TlsFiles> files = rpc::MakeThrowawayCertificates(dir, name, subject_alt_name);
  EXPECT_TRUE(files.ok()) << files.status();
  return files.ok() ? *std::move(files) : rpc::TlsFiles{};
}

}  // namespace pdserve::testing_util
