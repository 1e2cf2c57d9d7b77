// CAF 0.17's OpenSSL module (caf/openssl/session.cpp) calls SSL_read, SSL_write, SSL_connect and SSL_accept
// without emptying the thread's OpenSSL error queue first, which OpenSSL requires ("the current thread's
// error queue must be empty before the TLS/SSL I/O operation is attempted, or SSL_get_error() will not work
// reliably"). Every connection of a process is served by the one multiplexer thread, so when one peer dies
// (kill -9: an unexpected EOF leaves an error in the queue) the next call on every *other* connection reads
// that stale error as its own and CAF closes them all: one lost worker took every ring of the daemon with
// it (found by the chaos soak, tests/scheduler/chaos_soak.py; shown by tests/scheduler/worker_isolation.sh).
//
// These definitions interpose on libssl's for the whole process (the dynamic linker binds the library's
// references to the executable's definitions first): each empties the queue, then calls libssl's.
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <cstdlib>

namespace {

template <class F>
F Next(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (!f) {
    std::fprintf(stderr, "ringworld: libssl has no %s: %s\n", name, dlerror());
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

}  // namespace

extern "C" {

int SSL_read(SSL* ssl, void* buf, int num) {
  static const auto next = Next<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return next(ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  static const auto next = Next<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return next(ssl, buf, num);
}

int SSL_connect(SSL* ssl) {
  static const auto next = Next<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return next(ssl);
}

int SSL_accept(SSL* ssl) {
  static const auto next = Next<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return next(ssl);
}

}  // extern "C"

namespace rw::actors {
// Referenced by channel_auth.cpp so that this object is always linked where the channel is.
bool OpenSslErrorQueueGuarded() { return true; }
}  // namespace rw::actors
