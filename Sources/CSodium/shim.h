#ifndef SYNC_AGENT_CSODIUM_SHIM_H
#define SYNC_AGENT_CSODIUM_SHIM_H
#include <sodium.h>
#endif
