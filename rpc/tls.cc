#include "rpc/tls.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace pdserve::rpc {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in || text.str().empty()) {
    return absl::NotFoundError(absl::StrCat("cannot read ", flag, " file ", path));
  }
  return text.str();
}

struct Pems {
  std::string cert, key, ca;
};

absl::StatusOr<Pems> ReadAll(const TlsFiles& files) {
  if (files.cert.empty() || files.key.empty() || files.ca.empty()) {
    return absl::InvalidArgumentError(
        "mutual TLS needs all of --tls-cert, --tls-key and --tls-ca (or none of them)");
  }
  Pems pems;
  for (auto [path, flag, out] : {std::tuple{&files.cert, "--tls-cert", &pems.cert},
                                 std::tuple{&files.key, "--tls-key", &pems.key},
                                 std::tuple{&files.ca, "--tls-ca", &pems.ca}}) {
    absl::StatusOr<std::string> pem = ReadPem(*path, flag);
    if (!pem.ok()) return pem.status();
    *out = *std::move(pem);
  }
  return pems;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  absl::StatusOr<Pems> pems = ReadAll(files);
  if (!pems.ok()) return pems.status();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = pems->ca;
  options.pem_key_cert_pairs.push_back({pems->key, pems->cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureChannelCredentials();
  absl::StatusOr<Pems> pems = ReadAll(files);
  if (!pems.ok()) return pems.status();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = pems->ca;
  options.pem_private_key = pems->key;
  options.pem_cert_chain = pems->cert;
  return grpc::SslCredentials(options);
}

absl::StatusOr<TlsFiles> MakeThrowawayCertificates(const std::string& dir, const std::string& name,
                                                   const std::string& subject_alt_name) {
  const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string script = absl::StrCat(
      "set -e; cd '", dir, "'; openssl req -x509 ", key, " -keyout ", name, "-ca.key -out ", name,
      "-ca.pem -days 2 -subj /CN=", name, "-ca 2>/dev/null; openssl req ", key, " -keyout ", name,
      ".key -out ", name, ".csr -subj /CN=", name,
      " 2>/dev/null; printf 'subjectAltName=", subject_alt_name,
      "\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ", name, ".ext; openssl x509 -req -in ",
      name, ".csr -CA ", name, "-ca.pem -CAkey ", name, "-ca.key -CAcreateserial -out ", name,
      ".pem -days 2 -extfile ", name, ".ext 2>/dev/null");
  if (std::system(absl::StrCat("bash -c \"", script, "\"").c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("making certificates with the openssl tool failed: ", script));
  }
  const std::string p = absl::StrCat(dir, "/", name);
  return TlsFiles{.cert = p + ".pem", .key = p + ".key", .ca = p + "-ca.pem"};
}

}  // namespace pdserve::rpc
