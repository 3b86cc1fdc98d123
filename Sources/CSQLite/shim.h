#ifndef SYNC_AGENT_CSQLITE_SHIM_H
#define SYNC_AGENT_CSQLITE_SHIM_H
#include <sqlite3.h>
#endif
