#include <malloc.h>
#include <string.h>

/* `watch` allocates from one arena (Allocator.swift says why). It must be set before any thread
 * allocates: glibc gives a new thread an arena of its own on its first malloc, and an arena is
 * never given back. By the time Swift code runs, the concurrency runtime's threads exist, so it
 * is set here, before main, where glibc passes the program its arguments. Other commands keep
 * glibc's default. */
__attribute__((constructor)) static void sync_agent_one_arena_for_watch(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "watch") == 0) {
        mallopt(M_ARENA_MAX, 1);
    }
}
