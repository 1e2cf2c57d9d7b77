#include "actors/channel_auth.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <caf/openssl/all.hpp>
#include <filesystem>
#include <memory>

#include "runtime/private_file.h"

namespace rw::actors {
namespace {

template <class T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;

// The PEM text of what `write` puts into a memory BIO.
template <class F>
std::string Pem(F write) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get()) != 1) return "";
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, size_t(n));
}

}  // namespace

Status WriteChannelCredentials(const std::string& token, const std::string& dir, ChannelCredentials* out) {
  RW_REQUIRE(token.size() >= 32, "channel: the cluster token must have at least 32 characters");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  RW_REQUIRE(!ec, dir << ": cannot create: " << ec.message());
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, std::filesystem::perm_options::replace, ec);
  RW_REQUIRE(!ec, dir << ": cannot make it private: " << ec.message());
  // The key: SHA-256 of a domain label and the token, as an Ed25519 seed.
  const std::string material = std::string("ringworld control channel v1") + '\0' + token;
  unsigned char seed[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(material.data()), material.size(), seed);
  PKey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed, sizeof(seed)));
  OPENSSL_cleanse(seed, sizeof(seed));
  RW_REQUIRE(key, "channel: cannot make the Ed25519 key");
  // The certificate: every field fixed, so the same token gives the same bytes.
  Cert cert(X509_new());
  RW_REQUIRE(cert, "channel: cannot make the certificate");
  X509_NAME* name = X509_get_subject_name(cert.get());
  const bool made =
      X509_set_version(cert.get(), 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) == 1 &&
      ASN1_TIME_set_string(X509_getm_notBefore(cert.get()), "20200101000000Z") == 1 &&
      ASN1_TIME_set_string(X509_getm_notAfter(cert.get()), "20991231235959Z") == 1 &&
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("ringworld cluster"), -1, -1, 0) == 1 &&
      X509_set_issuer_name(cert.get(), name) == 1 && X509_set_pubkey(cert.get(), key.get()) == 1;
  RW_REQUIRE(made, "channel: cannot fill in the certificate");
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION* bc = X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints, "critical,CA:TRUE");
  RW_REQUIRE(bc && X509_add_ext(cert.get(), bc, -1) == 1, "channel: cannot add the certificate's constraints");
  X509_EXTENSION_free(bc);
  RW_REQUIRE(X509_sign(cert.get(), key.get(), nullptr) > 0, "channel: cannot sign the certificate");  // Ed25519: no digest
  const std::string cert_pem = Pem([&](BIO* b) { return PEM_write_bio_X509(b, cert.get()); });
  const std::string key_pem =
      Pem([&](BIO* b) { return PEM_write_bio_PrivateKey(b, key.get(), nullptr, nullptr, 0, nullptr, nullptr); });
  RW_REQUIRE(!cert_pem.empty() && !key_pem.empty(), "channel: cannot encode the credentials");
  out->certificate = dir + "/channel.pem";
  out->key = dir + "/channel.key";
  RW_RETURN_IF_ERROR(runtime::WritePrivateFile(out->certificate, cert_pem));
  RW_RETURN_IF_ERROR(runtime::WritePrivateFile(out->key, key_pem));
  return Status::Ok();
}

bool OpenSslErrorQueueGuarded();  // openssl_error_queue.cpp: CAF's OpenSSL module needs it

void EnableChannelAuth(SystemConfig& cfg, const ChannelCredentials& c) {
  if (!OpenSslErrorQueueGuarded()) return;
  cfg.load<caf::openssl::manager>();
  cfg.openssl_certificate = c.certificate;
  cfg.openssl_key = c.key;
  cfg.openssl_cafile = c.certificate;
}

}  // namespace rw::actors
