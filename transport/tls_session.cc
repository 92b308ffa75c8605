#include "transport/tls_session.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace pdserve::net {
namespace {

// The oldest reason on OpenSSL's error queue (the queue is per thread and cleared here).
std::string OpenSslReason() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "no detail from OpenSSL";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

bool Readable(const std::string& path) { return std::ifstream(path).good(); }

bool IsIpAddress(absl::string_view host) {
  const std::string h(host);
  in6_addr a6;
  in_addr a4;
  return ::inet_pton(AF_INET, h.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, h.c_str(), &a6) == 1;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::FromFiles(const std::string& cert,
                                                                        const std::string& key,
                                                                        const std::string& ca,
                                                                        Role role) {
  if (cert.empty() || key.empty() || ca.empty()) {
    return absl::InvalidArgumentError(
        "mutual TLS on the KV transport needs all of --tls-cert, --tls-key and --tls-ca");
  }
  for (const auto& [path, flag] :
       {std::pair{&cert, "--tls-cert"}, std::pair{&key, "--tls-key"}, std::pair{&ca, "--tls-ca"}}) {
    if (!Readable(*path)) {
      return absl::NotFoundError(absl::StrCat("cannot read ", flag, " file ", *path));
    }
  }
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(role == Role::kClient ? TLS_client_method() : TLS_server_method());
  if (ctx == nullptr) return absl::InternalError("SSL_CTX_new: " + OpenSslReason());
  std::shared_ptr<TlsContext> context(new TlsContext(ctx, role));
  // Both ends are pdserve: nothing older than TLS 1.3 needs to be spoken.
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  // AES-128-GCM first: the KV stream is bulk data and 128-bit AES is what TLS 1.3 mandates;
  // its fewer rounds cost less CPU per GB than AES-256 (pdserve-bench-transfer).
  SSL_CTX_set_ciphersuites(ctx,
                           "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                           "TLS_CHACHA20_POLY1305_SHA256");
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", cert, " is not a PEM certificate: ", OpenSslReason()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    const bool mismatch = ERR_GET_REASON(ERR_peek_error()) == X509_R_KEY_VALUES_MISMATCH;
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", key,
                     mismatch ? " does not belong to the certificate in --tls-cert "
                              : " is not a PEM private key",
                     mismatch ? cert : "", ": ", OpenSslReason()));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", key, " does not belong to ", cert, ": ", OpenSslReason()));
  }
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-ca ", ca, " is not a PEM CA bundle: ", OpenSslReason()));
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  if (role == Role::kServer) {
    // Connections are persistent, so resumption buys nothing; without tickets no record follows
    // the handshake unasked.
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
  return std::shared_ptr<const TlsContext>(std::move(context));
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::Create(const TlsContext& context,
                                                               absl::string_view peer_host) {
  ERR_clear_error();
  SSL* ssl = SSL_new(context.get());
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (ssl == nullptr || in == nullptr || out == nullptr) {
    SSL_free(ssl);
    BIO_free(in);
    BIO_free(out);
    return absl::ResourceExhaustedError("cannot make a TLS session: " + OpenSslReason());
  }
  // An empty input buffer means "wait for more", not end of stream.
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(ssl, in, out);
  std::unique_ptr<TlsSession> session(new TlsSession(ssl, in, out));
  if (context.role() == TlsContext::Role::kServer) {
    SSL_set_accept_state(ssl);
    return session;
  }
  SSL_set_connect_state(ssl);
  const std::string host(peer_host);
  const bool ip = IsIpAddress(host);
  const int named = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str())
                       : SSL_set1_host(ssl, host.c_str());
  if (!ip) SSL_set_tlsext_host_name(ssl, host.c_str());
  if (named != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot check the KV receiver's certificate against host '", host, "': ", OpenSslReason()));
  }
  return session;
}

TlsSession::~TlsSession() { SSL_free(ssl_); }  // frees both BIOs

void TlsSession::Received(const void* data, size_t size) {
  // A memory BIO only fails to grow when out of memory, which the allocator reports first.
  (void)BIO_write(in_, data, static_cast<int>(size));
}

absl::StatusOr<bool> TlsSession::Handshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  Drain();
  if (r == 1) return true;
  if (SSL_get_error(ssl_, r) == SSL_ERROR_WANT_READ) return false;
  absl::Status status = Error("TLS handshake failed", r);
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    status = absl::UnavailableError(absl::StrCat(
        status.message(), " (certificate: ", X509_verify_cert_error_string(verify), ")"));
  }
  return status;
}

TlsSession::ReadResult TlsSession::Read(void* data, size_t size) {
  ERR_clear_error();
  size_t n = 0;
  const int r = SSL_read_ex(ssl_, data, size, &n);
  Drain();  // an alert or a key update answer
  ReadResult result;
  if (r == 1) {
    result.bytes = n;
    return result;
  }
  switch (SSL_get_error(ssl_, r)) {
    case SSL_ERROR_WANT_READ:
      return result;
    case SSL_ERROR_ZERO_RETURN:
      result.peer_closed = true;
      return result;
    default:
      result.error = Error("TLS record rejected", r);
      return result;
  }
}

bool TlsSession::has_buffered_input() const {
  return SSL_pending(ssl_) > 0 || BIO_ctrl_pending(in_) > 0;
}

absl::Status TlsSession::Write(const void* data, size_t size) {
  const auto* p = static_cast<const std::byte*>(data);
  while (size > 0) {
    ERR_clear_error();
    size_t n = 0;
    const int r = SSL_write_ex(ssl_, p, size, &n);
    Drain();
    if (r != 1) return Error("TLS write failed", r);
    p += n;
    size -= n;
  }
  return absl::OkStatus();
}

std::span<const std::byte> TlsSession::outgoing() {
  return std::span<const std::byte>(pending_).subspan(pending_sent_);
}

void TlsSession::Consume(size_t bytes) {
  pending_sent_ = std::min(pending_sent_ + bytes, pending_.size());
  if (pending_sent_ == pending_.size()) {
    pending_.clear();
    pending_sent_ = 0;
  }
}

void TlsSession::TakeOutgoing(std::vector<std::byte>& into) {
  if (pending_sent_ == 0) {
    into.clear();
    into.swap(pending_);
  } else {
    into.assign(pending_.begin() + static_cast<std::ptrdiff_t>(pending_sent_), pending_.end());
    pending_.clear();
  }
  pending_sent_ = 0;
}

void TlsSession::Drain() {
  const size_t n = BIO_ctrl_pending(out_);
  if (n == 0) return;
  const size_t at = pending_.size();
  pending_.resize(at + n);
  const int got = BIO_read(out_, pending_.data() + at, static_cast<int>(n));
  pending_.resize(at + static_cast<size_t>(std::max(got, 0)));
}

absl::Status TlsSession::Error(absl::string_view what, int ret) {
  const int code = SSL_get_error(ssl_, ret);
  std::string reason = OpenSslReason();
  if (code == SSL_ERROR_SYSCALL || code == SSL_ERROR_SSL) {
    return absl::UnavailableError(absl::StrCat(what, ": ", reason));
  }
  return absl::UnavailableError(absl::StrCat(what, " (SSL error ", code, "): ", reason));
}

}  // namespace pdserve::net
