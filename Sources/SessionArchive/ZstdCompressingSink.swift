import CZstd
import Synchronization
import SystemSupport

/// The compression layer of an archive: the tar stream in, one zstd frame (no content size, no
/// checksum: FORMAT.md "Compression layer") out to `downstream`.
///
/// libarchive's zstd filter made a new compression context for every archive, and a context at
/// level 3 allocates and zeroes about a MiB of tables (fresh pages from the system each time)
/// before it compresses a byte. The sidecar writes one small archive per change, so that was a
/// fifth of its CPU. Contexts are kept between archives instead (`ZstdContext.pool`); a reused
/// context starts its next frame without clearing its tables.
///
/// Each frame is told roughly how large its input will be (`sizeHint`, zstd's source size
/// hint), so zstd sizes its tables and window to it: at level 3 without a hint the tables are
/// about 768 KiB, and each byte of a delta of a few KiB was hashed into them at random, cold in
/// the cache (perf: zstd was 8% of the sidecar's CPU for 75,000 instructions an upload,
/// callgrind). The frame records the smaller window in its header (never more than FORMAT.md's
/// 8 MiB), not a content size.
final class ZstdCompressingSink: ByteSink {
    private let context: ZstdContext
    private let downstream: ByteSink
    private var finished = false

    /// `workerThread`: compress on one zstd worker thread, beside the caller (large archives).
    /// `sizeHint`: about how many bytes will be written; 0 when unknown.
    init(level: Int, workerThread: Bool, sizeHint: Int64, downstream: ByteSink) throws {
        context = try workerThread ? ZstdContext(level: level, workerThreads: 1) : ZstdContext.pool.take(level: level)
        self.downstream = downstream
        context.setSizeHint(sizeHint)
    }

    deinit {
        // Abandoned, or finished: the next frame starts from nothing either way.
        context.endFrame()
        if !context.isThreaded { ZstdContext.pool.give(context) }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "ZstdCompressingSink written after finish()")
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        var input = ZSTD_inBuffer(src: base, size: bytes.count, pos: 0)
        while input.pos < input.size {
            _ = try context.compress(&input, ZSTD_e_continue, to: downstream)
        }
    }

    /// Ends the frame: everything written is compressed and handed to `downstream`.
    func finish() throws {
        guard !finished else { return }
        finished = true
        var input = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        while try context.compress(&input, ZSTD_e_end, to: downstream) != 0 {}
    }
}

/// One zstd compression context and its output buffer: the owner of the C handle. One user at
/// a time (a sink, or the pool behind its lock), which is what makes it safe to hand between
/// threads.
final class ZstdContext: @unchecked Sendable {
    /// Contexts waiting for their next archive. A few are enough: the sidecar compresses one
    /// small archive per change, at most one per upload slot at a time.
    static let pool = Pool()

    let level: Int
    let isThreaded: Bool
    private let handle: OpaquePointer
    private let output: UnsafeMutableRawBufferPointer
    /// Input compressed in the current frame: a context that compressed a large archive has
    /// touched its whole window, and is not kept (`Pool.give`).
    private(set) var frameInputBytes = 0

    init(level: Int, workerThreads: Int = 0) throws {
        guard let handle = ZSTD_createCCtx() else { fatalError("zstd: out of memory") }
        self.handle = handle
        self.level = level
        isThreaded = workerThreads > 0
        // Below glibc's threshold for pages of their own (Allocator.swift): a delta's output is
        // a few KiB, and `downstream` buffers what it is given anyway.
        output = UnsafeMutableRawBufferPointer.allocate(byteCount: 32 << 10, alignment: 16)
        try check(ZSTD_CCtx_setParameter(handle, ZSTD_c_compressionLevel, Int32(level)))
        if workerThreads > 0 { try check(ZSTD_CCtx_setParameter(handle, ZSTD_c_nbWorkers, Int32(workerThreads))) }
    }

    deinit {
        ZSTD_freeCCtx(handle)
        output.deallocate()
    }

    /// One step of `ZSTD_compressStream2`; whatever it produced goes to `sink`. Returns zstd's
    /// "bytes still to flush" (0: the directive is done).
    func compress(_ input: inout ZSTD_inBuffer, _ directive: ZSTD_EndDirective, to sink: ByteSink) throws -> Int {
        var out = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        let before = input.pos
        let remaining = ZSTD_compressStream2(handle, &out, &input, directive)
        try check(remaining)
        frameInputBytes += input.pos - before
        if out.pos > 0 { try sink.write(UnsafeRawBufferPointer(rebasing: output[..<out.pos])) }
        return remaining
    }

    /// zstd's source size hint for the next frame (0: none), set for every frame so none inherits
    /// another's. Only a hint: a libzstd that refuses it compresses with its defaults.
    func setSizeHint(_ bytes: Int64) {
        _ = ZSTD_CCtx_setParameter(handle, sync_agent_zstd_srcSizeHint, Int32(clamping: bytes))
    }

    /// Drops whatever frame was under way; the parameters stay.
    func endFrame() {
        ZSTD_CCtx_reset(handle, ZSTD_reset_session_only)
    }

    private func check(_ code: Int) throws {
        if ZSTD_isError(code) != 0 {
            throw ArchiveError(.writeFailed, detail: "zstd: " + String(cString: ZSTD_getErrorName(code)))
        }
    }

    final class Pool: Sendable {
        /// Contexts kept idle at most, and the largest frame after which one is kept: about a MiB
        /// each (tables, plus the part of the window the frame touched) stays resident.
        static let capacity = 2
        static let largestKeptFrame = 1 << 20

        private let idle = Mutex<[ZstdContext]>([])

        func take(level: Int) throws -> ZstdContext {
            let reused = idle.withLock { contexts -> ZstdContext? in
                guard let index = contexts.lastIndex(where: { $0.level == level }) else { return nil }
                return contexts.remove(at: index)
            }
            return try reused ?? ZstdContext(level: level)
        }

        func give(_ context: ZstdContext) {
            guard context.frameInputBytes <= Self.largestKeptFrame else { return }
            context.frameInputBytes = 0
            idle.withLock { contexts in
                if contexts.count == Self.capacity { contexts.removeFirst() }
                contexts.append(context)
            }
        }
    }
}
