#ifndef SYNC_AGENT_COPENSSL_SHIM_H
#define SYNC_AGENT_COPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <openssl/md5.h>
#endif
