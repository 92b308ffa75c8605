// Mutual TLS for the KV transport (OpenSSL). A TlsSession is driven through memory buffers, not
// the socket: callers keep their own socket I/O (the sender's writer and reader threads, the
// receiver's event loop), hand it the ciphertext they read and send the ciphertext it produces.
// That keeps one TLS connection usable from two threads under a lock that is never held across
// a system call, and lets the receiver's non-blocking loop stay as it is.
#pragma once

#include <openssl/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pdserve::net {

// An OpenSSL context for one side of KV connections, from PEM files: the certificate this
// process presents, its key, and the CA bundle the peer's certificate must chain to. TLS 1.3
// only; both sides present and verify certificates. The client also checks that the server's
// certificate names the host it dialed (DNS name or IP address, as gRPC does).
// Thread-safety: immutable once made; shared by every session.
class TlsContext {
 public:
  enum class Role { kClient, kServer };
  // INVALID_ARGUMENT when a file is missing from the set, NOT_FOUND / INVALID_ARGUMENT when one
  // cannot be read or parsed, or the key does not match the certificate.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> FromFiles(const std::string& cert,
                                                                     const std::string& key,
                                                                     const std::string& ca,
                                                                     Role role);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  Role role() const { return role_; }
  SSL_CTX* get() const { return ctx_; }

 private:
  TlsContext(SSL_CTX* ctx, Role role) : ctx_(ctx), role_(role) {}
  SSL_CTX* ctx_;
  Role role_;
};

// One TLS connection's state. Not thread-safe: callers serialize every call.
class TlsSession {
 public:
  // `peer_host` (clients only): the name or address the server's certificate must carry.
  static absl::StatusOr<std::unique_ptr<TlsSession>> Create(const TlsContext& context,
                                                            absl::string_view peer_host = {});
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Hands over ciphertext read from the socket.
  void Received(const void* data, size_t size);
  // Advances the handshake: true once it is complete, false while it needs more ciphertext from
  // the peer (send outgoing() first); UNAVAILABLE when it failed (a bad certificate, a peer
  // that does not speak TLS), saying why.
  absl::StatusOr<bool> Handshake();

  // What one Read did: `bytes` of plaintext (0: it needs more ciphertext), or the peer ended the
  // session (close_notify), or an error (a forged or corrupt record: UNAVAILABLE).
  struct ReadResult {
    size_t bytes = 0;
    bool peer_closed = false;
    absl::Status error;
  };
  // Decrypts up to `size` bytes of the data received so far into `data`.
  ReadResult Read(void* data, size_t size);
  // Whether received ciphertext or decrypted plaintext is still waiting inside the session (a
  // Read would return bytes without new input from the socket).
  bool has_buffered_input() const;

  // Encrypts `size` bytes; the records join outgoing().
  absl::Status Write(const void* data, size_t size);
  // Ciphertext waiting to be written to the socket, oldest first; Consume(n) once n of it went.
  std::span<const std::byte> outgoing();
  void Consume(size_t bytes);
  // Moves all of outgoing() into `into` (replacing its contents; its capacity is reused).
  void TakeOutgoing(std::vector<std::byte>& into);

 private:
  TlsSession(SSL* ssl, BIO* in, BIO* out) : ssl_(ssl), in_(in), out_(out) {}
  // Moves what OpenSSL wrote into `out_` to `pending_`.
  void Drain();
  // "what: reason from OpenSSL's error queue" as UNAVAILABLE (clears the queue).
  absl::Status Error(absl::string_view what, int ret);

  SSL* ssl_;
  BIO* in_;                         // ciphertext from the peer, owned by ssl_
  BIO* out_;                        // ciphertext to the peer, owned by ssl_
  std::vector<std::byte> pending_;  // drained from out_, pending_sent_ of it already taken
  size_t pending_sent_ = 0;
};

}  // namespace pdserve::net
