#ifndef SYNC_AGENT_CZSTD_SHIM_H
#define SYNC_AGENT_CZSTD_SHIM_H
/* For ZSTD_c_srcSizeHint alone: an experimental parameter (libzstd takes it since 1.4.4) of
   the stable ZSTD_CCtx_setParameter; the caller treats a refusal as no hint. */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

static const ZSTD_cParameter sync_agent_zstd_srcSizeHint = ZSTD_c_srcSizeHint;
#endif
