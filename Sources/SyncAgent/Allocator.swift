import CMalloc

/// glibc's allocator, tuned for a long-running sidecar that should stay small.
enum Allocator {
    /// Blocks of 64 KiB or more (archive and upload buffers, a session's file table) get
    /// pages of their own, returned to the system as soon as they are freed. By default glibc
    /// raises that threshold as the program frees large blocks, and then keeps bursts of them
    /// (every session's first upload at start-up) resident for good. Measured on 50 sessions of
    /// 1,000 files: 36 → 22 MiB of anonymous memory once the first uploads are done.
    ///
    /// And one arena for every thread, set before main (`Sources/CMalloc/OneArena.c`): glibc
    /// gives each new thread an arena of its own, up to 8 per core, and each keeps what its
    /// thread freed (50 sessions × 1,000 files: 14 arenas held 11.7 MiB; with one, peak RSS went
    /// 54.1 → 47.5 MiB). The agent's threads mostly wait on the network and the disk, and each
    /// keeps its own cache of small blocks (tcache), so they seldom wait for the arena's lock.
    static func preferReturningMemory() {
        _ = mallopt(M_MMAP_THRESHOLD, 64 << 10)
        _ = mallopt(M_TRIM_THRESHOLD, 128 << 10)
    }
}
