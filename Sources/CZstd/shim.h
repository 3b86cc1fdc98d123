#ifndef SYNC_AGENT_CZSTD_SHIM_H
#define SYNC_AGENT_CZSTD_SHIM_H
#include <zstd.h>
#endif
