#ifndef SYNC_AGENT_CARCHIVE_SHIM_H
#define SYNC_AGENT_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
#endif
