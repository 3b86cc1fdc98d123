#ifndef SYNC_AGENT_CZSTD_SHIM_H
#define SYNC_AGENT_CZSTD_SHIM_H
/* For ZSTD_c_srcSizeHint alone: a parameter of ZSTD_CCtx_setParameter (stable API) that
   libzstd has taken since 1.4.4; its name is behind the experimental section of the header. */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

static const ZSTD_cParameter sync_agent_zstd_srcSizeHint = ZSTD_c_srcSizeHint;
#endif
