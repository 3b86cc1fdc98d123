#ifndef SYNC_AGENT_COPENSSL_SHIM_H
#define SYNC_AGENT_COPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <openssl/md5.h>

/* SHA-256 and MD5 of one message through OpenSSL's SHA256_* and MD5_* functions, without EVP's
   fetch and context setup per call, which cost three times the hashing of a 100-byte message
   (the state digest hashes one line per file; every request hashes its canonical request and
   body). Deprecated in OpenSSL 3, not removed; a system header's warnings stay here. */
static inline void sync_agent_sha256(const void *data, size_t length, unsigned char digest[32]) {
    SHA256_CTX context;
    SHA256_Init(&context);
    SHA256_Update(&context, data, length);
    SHA256_Final(digest, &context);
}

static inline void sync_agent_md5(const void *data, size_t length, unsigned char digest[16]) {
    MD5_CTX context;
    MD5_Init(&context);
    MD5_Update(&context, data, length);
    MD5_Final(digest, &context);
}
#endif
