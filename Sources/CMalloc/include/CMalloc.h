#ifndef SYNC_AGENT_CMALLOC_H
#define SYNC_AGENT_CMALLOC_H
// glibc's allocator tuning (mallopt), which the Swift Glibc module does not export.
#include <malloc.h>
#endif
