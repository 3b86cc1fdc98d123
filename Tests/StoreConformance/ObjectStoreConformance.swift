import Foundation
import Glibc
import S3Store
import Synchronization
import SyncEngine
import SystemSupport
import TestSupport
import Testing

/// A backend the conformance suite runs against: the local filesystem store, or an
/// `S3ObjectStore` on one of the real servers, each on a fresh, empty location.
public struct StoreBackend: Sendable, CustomTestStringConvertible {
    public enum Kind: Sendable {
        case fileSystem
        case s3(TestS3Server)
    }

    public let kind: Kind

    public static let fileSystem = StoreBackend(kind: .fileSystem)
    public static let s3Servers = TestS3Server.all.map { StoreBackend(kind: .s3($0)) }
    public static let all = [fileSystem] + s3Servers

    public var testDescription: String {
        switch kind {
        case .fileSystem: "filesystem"
        case .s3(let server): server.testDescription
        }
    }

    public var enforcesConditionalWrites: Bool {
        switch kind {
        case .fileSystem: true
        case .s3(let server): server.honorsConditionalWrites
        }
    }

    public func makeStore() async throws -> StoreFixture {
        let scratch = try TemporaryDirectory()
        switch kind {
        case .fileSystem:
            return StoreFixture(store: try FileSystemStore(root: scratch.file("store")), scratch: scratch)
        case .s3(let server):
            // A prefix with a "/" inside and none at the end, so normalisation is exercised too.
            let store = try S3ObjectStore(client: try await server.freshBucket(), prefix: "p-\(randomHex(4))/store")
            return StoreFixture(store: store, scratch: scratch)
        }
    }
}

/// A store under test and a scratch directory for the test's own files (the filesystem
/// store lives in it too); go through the fixture so the directory outlives every call, and the
/// files opened for `ObjectBody.file` stay open until the fixture goes.
public final class StoreFixture: Sendable {
    public let store: any ObjectStore
    public let scratch: TemporaryDirectory
    private let openFiles = Mutex<[Int32]>([])

    public init(store: any ObjectStore, scratch: TemporaryDirectory) {
        self.store = store
        self.scratch = scratch
    }

    deinit {
        for descriptor in openFiles.withLock({ $0 }) { close(descriptor) }
    }

    public func writeFile(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = scratch.file(name)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    public func readFile(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: scratch.file(name))))
    }

    /// `bytes` written to the scratch file `name`, as a body read from its open descriptor.
    public func fileBody(_ name: String, _ bytes: [UInt8]) throws -> ObjectBody {
        try opened(writeFile(name, bytes), flags: O_RDONLY)
    }

    /// A body whose reads fail: the descriptor of a directory (pread says EISDIR).
    public func unreadableBody() throws -> ObjectBody {
        try opened(scratch.path, flags: O_RDONLY | O_DIRECTORY)
    }

    private func opened(_ path: String, flags: Int32) throws -> ObjectBody {
        let descriptor = open(path, flags | O_CLOEXEC)
        guard descriptor >= 0 else { throw ProgramFailure("cannot open \(path): errno \(errno)") }
        openFiles.withLock { $0.append(descriptor) }
        return .file(descriptor: descriptor)
    }
}

extension ObjectStore {
    /// Tests read back objects they wrote themselves; the bound is only there because every read has one.
    public func get(_ key: String) async throws(StoreError) -> StoredObject? {
        try await get(key, maxSize: 1 << 30)
    }

    public func download(_ key: String, toFileAt path: String) async throws(StoreError) -> StoredObjectInfo? {
        try await download(key, toFileAt: path, maxSize: 1 << 30)
    }
}

/// One case of the `ObjectStore` contract, run by each backend's test target (litestream's
/// `RunClientTest`): SyncEngineTests on the filesystem store, S3StoreTests on the S3 servers.
public struct ObjectStoreConformanceCase: Sendable, CustomTestStringConvertible {
    public let name: String
    let body: @Sendable (StoreBackend) async throws -> Void

    public var testDescription: String { name }

    public func run(on backend: StoreBackend) async throws {
        try await body(backend)
    }
}

/// The `ObjectStore` contract, run unchanged against every backend.
enum ObjectStoreConformance {
    static func bytesRoundTripThroughPutGetHeadDelete(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes(3 << 20)
        let etag = try await fixture.store.put("sessions/abc/base-1", body: .bytes(bytes), condition: nil)
        #expect(etag == MD5.hash(bytes).lowercaseHex)

        let object = try #require(try await fixture.store.get("sessions/abc/base-1"))
        #expect(object.bytes == bytes)
        #expect(object.info.key == "sessions/abc/base-1")
        #expect(object.info.size == Int64(bytes.count))
        #expect(object.info.etag == etag)
        let head = try #require(try await fixture.store.head("sessions/abc/base-1"))
        #expect(head.key == "sessions/abc/base-1")
        #expect(head.size == Int64(bytes.count))
        #expect(head.etag == etag)
        #expect(head.lastModified != nil)

        try await fixture.store.delete(["sessions/abc/base-1"])
        #expect(try await fixture.store.get("sessions/abc/base-1") == nil)
        #expect(try await fixture.store.head("sessions/abc/base-1") == nil)
        #expect(try await fixture.store.list(prefix: "").isEmpty)
    }

    static func filesRoundTripThroughPutAndDownload(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        for (name, size) in [("large", (4 << 20) + 17), ("empty", 0)] {
            let bytes = randomBytes(size)
            let etag = try await fixture.store.put("files/\(name)", body: try fixture.fileBody(name, bytes), condition: nil)
            let info = try #require(try await fixture.store.download("files/\(name)", toFileAt: fixture.scratch.file("\(name).back")))
            #expect(info.size == Int64(size))
            #expect(info.etag == etag)
            #expect(try fixture.readFile("\(name).back") == bytes, "\(name) came back different")
            let attributes = try FileManager.default.attributesOfItem(atPath: fixture.scratch.file("\(name).back"))
            #expect(attributes[.posixPermissions] as? Int == 0o600)
            #expect(try await fixture.store.get("files/\(name)")?.bytes == bytes)
        }
    }

    /// A file body is rewindable: each put (and each retried request) reads it from offset 0,
    /// wherever the descriptor's position is, and it can be put again.
    static func aFileBodyIsReadFromItsStartEachTime(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes(300_000)
        let body = try fixture.fileBody("spool", bytes)
        guard case .file(let descriptor) = body else { Issue.record("not a file body"); return }
        #expect(lseek(descriptor, 0, SEEK_END) == 300_000)
        let first = try await fixture.store.put("sessions/abc/first", body: body, condition: nil)
        let second = try await fixture.store.put("sessions/abc/second", body: body, condition: nil)
        #expect(first == second)
        #expect(try await fixture.store.get("sessions/abc/first")?.bytes == bytes)
        #expect(try await fixture.store.get("sessions/abc/second")?.bytes == bytes)
    }

    /// A download stops at its bound (the size the listing said): an object replaced by a larger
    /// one, or a huge one, must not fill the disk before its size is checked. It downloaded any size.
    static func aDownloadPastItsBoundIsRefusedAndLeavesNoFile(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes((4 << 20) + 17)
        try await fixture.store.put("files/large", body: try fixture.fileBody("large", bytes), condition: nil)
        let out = fixture.scratch.file("large.back")
        let error = await #expect(throws: StoreError.self) {
            try await fixture.store.download("files/large", toFileAt: out, maxSize: 1 << 20)
        }
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("files/large") && message.contains("\(1 << 20)"), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: out))

        let info = try #require(try await fixture.store.download("files/large", toFileAt: out, maxSize: Int64(bytes.count)))
        #expect(info.size == Int64(bytes.count))
        #expect(try fixture.readFile("large.back") == bytes)
    }

    /// What the ranged reads it replaced checked of the edges, at the bound every read has: an
    /// object of exactly `maxSize` bytes comes whole, one byte more is refused, an empty object
    /// (whose range S3 cannot satisfy) is empty.
    static func boundedReadsStopAtTheBound(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes(70_000)
        let etag = try await fixture.store.put("bounded", body: .bytes(bytes), condition: nil)

        let whole = try #require(try await fixture.store.get("bounded", maxSize: 70_000))
        #expect(whole.bytes == bytes)
        #expect(whole.info.size == 70_000)
        #expect(whole.info.etag == etag)
        let error = await #expect(throws: StoreError.self) { try await fixture.store.get("bounded", maxSize: 69_999) }
        guard case .invalidObject(let message) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(message.contains("bounded") && message.contains("69999"), "\(message)")

        try await fixture.store.put("empty", body: .bytes([]), condition: nil)
        #expect(try await fixture.store.get("empty", maxSize: 0)?.bytes == [])
        #expect(try await fixture.store.get("empty", maxSize: 9)?.bytes == [])
        #expect(try await fixture.store.get("missing", maxSize: 9) == nil)
    }

    static func missingObjectsAreNilAndDeletingThemIsFine(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        #expect(try await fixture.store.get("sessions/none/head") == nil)
        #expect(try await fixture.store.head("sessions/none/head") == nil)
        #expect(try await fixture.store.download("sessions/none/head", toFileAt: fixture.scratch.file("out")) == nil)
        #expect(!FileManager.default.fileExists(atPath: fixture.scratch.file("out")))
        #expect(try await fixture.store.list(prefix: "sessions/").isEmpty)
        try await fixture.store.delete(["sessions/none/head", "never"])
        try await fixture.store.delete([])

        // A key that is only the beginning of another key's path is no object either.
        try await fixture.store.put("sessions/some/head", body: .bytes([1]), condition: nil)
        #expect(try await fixture.store.get("sessions/some") == nil)
        #expect(try await fixture.store.head("sessions") == nil)
    }

    static func listingReturnsStoreKeysUnderThePrefixSorted(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let keys = [
            "sessions/abd/x", "sessions/abc/delta/2", "other/y", "sessions/b", "sessions/abc/base",
            "sessions/abc/delta/10", "sessions/ab", "top",
        ]
        for key in keys { try await fixture.store.put(key, body: .bytes(Array(key.utf8)), condition: nil) }

        func listed(_ prefix: String) async throws -> [String] {
            try await fixture.store.list(prefix: prefix).map(\.key)
        }
        #expect(try await listed("") == keys.sorted())
        #expect(try await listed("sessions/ab") == [
            "sessions/ab", "sessions/abc/base", "sessions/abc/delta/10", "sessions/abc/delta/2", "sessions/abd/x",
        ])
        #expect(try await listed("sessions/abc") == ["sessions/abc/base", "sessions/abc/delta/10", "sessions/abc/delta/2"])
        #expect(try await listed("sessions/abc/") == ["sessions/abc/base", "sessions/abc/delta/10", "sessions/abc/delta/2"])
        #expect(try await listed("sessions/abc/delta/1") == ["sessions/abc/delta/10"])
        #expect(try await listed("sessions/b") == ["sessions/b"])
        #expect(try await listed("t") == ["top"])
        #expect(try await listed("sessions/zzz").isEmpty)
        #expect(try await listed("top/").isEmpty)

        let base = try #require(try await fixture.store.list(prefix: "sessions/abc/base").first)
        #expect(base.size == Int64("sessions/abc/base".utf8.count))
    }

    /// Past 1,000 keys, so the S3 listing needs a second page.
    static func listingFollowsEveryPage(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let keys = (0..<1_100).map { "many/\($0 % 7)/\($0)" }
        let store = fixture.store
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, key) in keys.enumerated() {
                if index >= 16 { try await group.next() }
                group.addTask { try await store.put(key, body: .bytes([UInt8(index % 256)]), condition: nil) }
            }
            try await group.waitForAll()
        }
        let listed = try await fixture.store.list(prefix: "many/")
        #expect(listed.map(\.key) == keys.sorted())
        #expect(listed.allSatisfy { $0.size == 1 })
    }

    static func overwriteReplacesTheObject(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let first = try await fixture.store.put("sessions/abc/head", body: .bytes(Array("first".utf8)), condition: nil)
        let second = try await fixture.store.put("sessions/abc/head", body: .bytes(Array("second, longer".utf8)), condition: nil)
        #expect(first != second)
        #expect(try await fixture.store.get("sessions/abc/head")?.bytes == Array("second, longer".utf8))
        #expect(try await fixture.store.head("sessions/abc/head")?.etag == second)
        let third = try await fixture.store.put("sessions/abc/head", body: try fixture.fileBody("third", [3]), condition: nil)
        #expect(try await fixture.store.get("sessions/abc/head")?.bytes == [3])
        #expect(try await fixture.store.head("sessions/abc/head")?.etag == third)
        #expect(try await fixture.store.list(prefix: "").map(\.key) == ["sessions/abc/head"])
    }

    /// Fencing relies on these; a backend that ignores them must say so in its probe.
    static func conditionalWritesAreEnforcedOrReportedAsIgnored(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let store = fixture.store
        #expect(try await store.probeConditionalWrites() == backend.enforcesConditionalWrites)
        #expect(try await store.list(prefix: "").isEmpty, "the probe leaves nothing behind")
        guard backend.enforcesConditionalWrites else { return }

        let created = try await store.put("lease", body: .bytes([1]), condition: .ifAbsent)
        await #expect(throws: StoreError.preconditionFailed(key: "lease")) {
            try await store.put("lease", body: .bytes([2]), condition: .ifAbsent)
        }
        let renewed = try await store.put("lease", body: .bytes([3]), condition: .ifMatch(etag: created))
        await #expect(throws: StoreError.preconditionFailed(key: "lease")) {
            try await store.put("lease", body: .bytes([4]), condition: .ifMatch(etag: created))
        }
        await #expect(throws: StoreError.preconditionFailed(key: "lease")) {
            try await store.put("lease", body: try fixture.fileBody("five", [5]), condition: .ifMatch(etag: created))
        }
        #expect(try await store.get("lease")?.bytes == [3])
        #expect(try await store.head("lease")?.etag == renewed)

        let fromFile = try await store.put("claim", body: try fixture.fileBody("six", [6]), condition: .ifAbsent)
        await #expect(throws: StoreError.preconditionFailed(key: "claim")) {
            try await store.put("claim", body: try fixture.fileBody("seven", [7]), condition: .ifAbsent)
        }
        #expect(try await store.head("claim")?.etag == fromFile)
        await #expect(throws: StoreError.preconditionFailed(key: "nothing")) {
            try await store.put("nothing", body: .bytes([8]), condition: .ifMatch(etag: created))
        }
        #expect(try await store.head("nothing") == nil)
    }

    static func invalidKeysAndPrefixesAreRejected(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let store = fixture.store
        // "/" followed by a combining mark is one Character, but still a separator.
        for key in ["", "/abs", "../x", "a/../../x", "a//b", "a/./b", "a/", ".", "..", "a\0b", "../\u{301}x", "a/./\u{301}"] {
            await #expect(throws: StoreError.self, "put \(key.debugDescription)") { try await store.put(key, body: .bytes([1]), condition: nil) }
            await #expect(throws: StoreError.self) { try await store.get(key) }
            await #expect(throws: StoreError.self) { try await store.head(key) }
            await #expect(throws: StoreError.self) { try await store.download(key, toFileAt: fixture.scratch.file("out")) }
            await #expect(throws: StoreError.self) { try await store.delete(["fine", key]) }
        }
        for prefix in ["../", "/", "a//", "a/../b", "a\0"] {
            await #expect(throws: StoreError.self, "list \(prefix.debugDescription)") { try await store.list(prefix: prefix) }
        }
        #expect(try await store.list(prefix: "").isEmpty)
    }

    static func putFromAnUnreadableFileIsALocalIOError(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let store = fixture.store
        let error = await #expect(throws: StoreError.self) {
            try await store.put("sessions/abc/base", body: try fixture.unreadableBody(), condition: nil)
        }
        guard case .io(let reason) = error else {
            Issue.record("expected a local I/O error, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("file descriptor"), "\(reason)")
        #expect(try await store.head("sessions/abc/base") == nil)
    }

    static func locationNamesTheBackend(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        switch backend.kind {
        case .fileSystem:
            let root = (fixture.scratch.path + "/store").replacingOccurrences(of: "//", with: "/")
            #expect(fixture.store.location == "file://\(root)")
        case .s3: #expect(fixture.store.location.hasPrefix("s3://t-") && fixture.store.location.hasSuffix("/store"))
        }
    }
}

/// Every case, for `@Test(arguments:)`.
public let objectStoreConformanceCases = [
    ObjectStoreConformanceCase(name: "bytesRoundTripThroughPutGetHeadDelete", body: ObjectStoreConformance.bytesRoundTripThroughPutGetHeadDelete),
    ObjectStoreConformanceCase(name: "filesRoundTripThroughPutAndDownload", body: ObjectStoreConformance.filesRoundTripThroughPutAndDownload),
    ObjectStoreConformanceCase(name: "aFileBodyIsReadFromItsStartEachTime", body: ObjectStoreConformance.aFileBodyIsReadFromItsStartEachTime),
    ObjectStoreConformanceCase(name: "aDownloadPastItsBoundIsRefusedAndLeavesNoFile", body: ObjectStoreConformance.aDownloadPastItsBoundIsRefusedAndLeavesNoFile),
    ObjectStoreConformanceCase(name: "boundedReadsStopAtTheBound", body: ObjectStoreConformance.boundedReadsStopAtTheBound),
    ObjectStoreConformanceCase(name: "missingObjectsAreNilAndDeletingThemIsFine", body: ObjectStoreConformance.missingObjectsAreNilAndDeletingThemIsFine),
    ObjectStoreConformanceCase(name: "listingReturnsStoreKeysUnderThePrefixSorted", body: ObjectStoreConformance.listingReturnsStoreKeysUnderThePrefixSorted),
    ObjectStoreConformanceCase(name: "listingFollowsEveryPage", body: ObjectStoreConformance.listingFollowsEveryPage),
    ObjectStoreConformanceCase(name: "overwriteReplacesTheObject", body: ObjectStoreConformance.overwriteReplacesTheObject),
    ObjectStoreConformanceCase(name: "conditionalWritesAreEnforcedOrReportedAsIgnored", body: ObjectStoreConformance.conditionalWritesAreEnforcedOrReportedAsIgnored),
    ObjectStoreConformanceCase(name: "invalidKeysAndPrefixesAreRejected", body: ObjectStoreConformance.invalidKeysAndPrefixesAreRejected),
    ObjectStoreConformanceCase(name: "putFromAnUnreadableFileIsALocalIOError", body: ObjectStoreConformance.putFromAnUnreadableFileIsALocalIOError),
    ObjectStoreConformanceCase(name: "locationNamesTheBackend", body: ObjectStoreConformance.locationNamesTheBackend),
]
