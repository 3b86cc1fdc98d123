import Foundation
import S3Client
import SyncEngine
import SystemSupport
import TestSupport
import Testing

/// A backend the conformance suite runs against: the local filesystem store, or an
/// `S3ObjectStore` on one of the real servers, each on a fresh, empty location.
struct StoreBackend: Sendable, CustomTestStringConvertible {
    enum Kind: Sendable {
        case fileSystem
        case s3(TestS3Server)
    }

    let kind: Kind

    static let all = [StoreBackend(kind: .fileSystem)] + TestS3Server.all.map { StoreBackend(kind: .s3($0)) }

    var testDescription: String {
        switch kind {
        case .fileSystem: "filesystem"
        case .s3(let server): server.testDescription
        }
    }

    var enforcesConditionalWrites: Bool {
        switch kind {
        case .fileSystem: true
        case .s3(let server): server.honorsConditionalWrites
        }
    }

    func makeStore() async throws -> StoreFixture {
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
/// store lives in it too); go through the fixture so the directory outlives every call.
final class StoreFixture: Sendable {
    let store: any ObjectStore
    let scratch: TemporaryDirectory

    init(store: any ObjectStore, scratch: TemporaryDirectory) {
        self.store = store
        self.scratch = scratch
    }

    func writeFile(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = scratch.file(name)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func readFile(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: scratch.file(name))))
    }
}


/// The `ObjectStore` contract, run unchanged against every backend.
@Suite("Object stores conform to ObjectStore")
struct ObjectStoreConformanceTests {
    @Test(arguments: StoreBackend.all)
    func bytesRoundTripThroughPutGetHeadDelete(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes(3 << 20)
        let etag = try await fixture.store.put("sessions/abc/base-1", bytes: bytes)
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

    @Test(arguments: StoreBackend.all)
    func filesRoundTripThroughPutAndDownload(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        for (name, size) in [("large", (4 << 20) + 17), ("empty", 0)] {
            let bytes = randomBytes(size)
            let etag = try await fixture.store.put("files/\(name)", fileAt: try fixture.writeFile(name, bytes), condition: nil)
            let info = try #require(try await fixture.store.download("files/\(name)", toFileAt: fixture.scratch.file("\(name).back")))
            #expect(info.size == Int64(size))
            #expect(info.etag == etag)
            #expect(try fixture.readFile("\(name).back") == bytes, "\(name) came back different")
            let attributes = try FileManager.default.attributesOfItem(atPath: fixture.scratch.file("\(name).back"))
            #expect(attributes[.posixPermissions] as? Int == 0o600)
            #expect(try await fixture.store.get("files/\(name)")?.bytes == bytes)
        }
    }

    /// A download stops at its bound (the size the listing said): an object replaced by a larger
    /// one, or a huge one, must not fill the disk before its size is checked. It downloaded any size.
    @Test(arguments: StoreBackend.all)
    func aDownloadPastItsBoundIsRefusedAndLeavesNoFile(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes((4 << 20) + 17)
        try await fixture.store.put("files/large", fileAt: try fixture.writeFile("large", bytes), condition: nil)
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

    @Test(arguments: StoreBackend.all)
    func rangeReadsAreCutAtTheEndLikeHTTP(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let bytes = randomBytes(70_000)
        let etag = try await fixture.store.put("ranged", bytes: bytes)

        let middle = try #require(try await fixture.store.get("ranged", range: 10...19))
        #expect(middle.bytes == Array(bytes[10...19]))
        #expect(middle.info.size == 70_000)
        #expect(middle.info.etag == etag)
        #expect(try await fixture.store.get("ranged", range: 0...0)?.bytes == [bytes[0]])
        #expect(try await fixture.store.get("ranged", range: 65_000...69_999)?.bytes == Array(bytes[65_000...]))
        #expect(try await fixture.store.get("ranged", range: 69_990...80_000)?.bytes == Array(bytes[69_990...]))
        let pastTheEnd = try #require(try await fixture.store.get("ranged", range: 70_000...70_100))
        #expect(pastTheEnd.bytes.isEmpty)
        #expect(pastTheEnd.info.size == 70_000)

        try await fixture.store.put("empty", bytes: [])
        #expect(try await fixture.store.get("empty", range: 0...9)?.bytes == [])
        #expect(try await fixture.store.get("missing", range: 0...9) == nil)
    }

    @Test(arguments: StoreBackend.all)
    func missingObjectsAreNilAndDeletingThemIsFine(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        #expect(try await fixture.store.get("sessions/none/head") == nil)
        #expect(try await fixture.store.head("sessions/none/head") == nil)
        #expect(try await fixture.store.download("sessions/none/head", toFileAt: fixture.scratch.file("out")) == nil)
        #expect(!FileManager.default.fileExists(atPath: fixture.scratch.file("out")))
        #expect(try await fixture.store.list(prefix: "sessions/").isEmpty)
        try await fixture.store.delete(["sessions/none/head", "never"])
        try await fixture.store.delete([])

        // A key that is only the beginning of another key's path is no object either.
        try await fixture.store.put("sessions/some/head", bytes: [1])
        #expect(try await fixture.store.get("sessions/some") == nil)
        #expect(try await fixture.store.head("sessions") == nil)
    }

    @Test(arguments: StoreBackend.all)
    func listingReturnsStoreKeysUnderThePrefixSorted(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let keys = [
            "sessions/abd/x", "sessions/abc/delta/2", "other/y", "sessions/b", "sessions/abc/base",
            "sessions/abc/delta/10", "sessions/ab", "top",
        ]
        for key in keys { try await fixture.store.put(key, bytes: Array(key.utf8)) }

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
    @Test(arguments: StoreBackend.all)
    func listingFollowsEveryPage(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let keys = (0..<1_100).map { "many/\($0 % 7)/\($0)" }
        let store = fixture.store
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, key) in keys.enumerated() {
                if index >= 16 { try await group.next() }
                group.addTask { try await store.put(key, bytes: [UInt8(index % 256)]) }
            }
            try await group.waitForAll()
        }
        let listed = try await fixture.store.list(prefix: "many/")
        #expect(listed.map(\.key) == keys.sorted())
        #expect(listed.allSatisfy { $0.size == 1 })
    }

    @Test(arguments: StoreBackend.all)
    func overwriteReplacesTheObject(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let first = try await fixture.store.put("sessions/abc/head", bytes: Array("first".utf8))
        let second = try await fixture.store.put("sessions/abc/head", bytes: Array("second, longer".utf8))
        #expect(first != second)
        #expect(try await fixture.store.get("sessions/abc/head")?.bytes == Array("second, longer".utf8))
        #expect(try await fixture.store.head("sessions/abc/head")?.etag == second)
        let third = try await fixture.store.put("sessions/abc/head", fileAt: try fixture.writeFile("third", [3]), condition: nil)
        #expect(try await fixture.store.get("sessions/abc/head")?.bytes == [3])
        #expect(try await fixture.store.head("sessions/abc/head")?.etag == third)
        #expect(try await fixture.store.list(prefix: "").map(\.key) == ["sessions/abc/head"])
    }

    /// Fencing relies on these; a backend that ignores them must say so in its probe.
    @Test(arguments: StoreBackend.all)
    func conditionalWritesAreEnforcedOrReportedAsIgnored(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let store = fixture.store
        #expect(try await store.probeConditionalWrites() == backend.enforcesConditionalWrites)
        #expect(try await store.list(prefix: "").isEmpty, "the probe leaves nothing behind")
        guard backend.enforcesConditionalWrites else { return }

        let created = try await store.put("lease", bytes: [1], condition: .ifAbsent)
        await #expect(throws: StoreError.preconditionFailed(key: "lease")) {
            try await store.put("lease", bytes: [2], condition: .ifAbsent)
        }
        let renewed = try await store.put("lease", bytes: [3], condition: .ifMatch(etag: created))
        await #expect(throws: StoreError.preconditionFailed(key: "lease")) {
            try await store.put("lease", bytes: [4], condition: .ifMatch(etag: created))
        }
        await #expect(throws: StoreError.preconditionFailed(key: "lease")) {
            try await store.put("lease", fileAt: try fixture.writeFile("five", [5]), condition: .ifMatch(etag: created))
        }
        #expect(try await store.get("lease")?.bytes == [3])
        #expect(try await store.head("lease")?.etag == renewed)

        let fromFile = try await store.put("claim", fileAt: try fixture.writeFile("six", [6]), condition: .ifAbsent)
        await #expect(throws: StoreError.preconditionFailed(key: "claim")) {
            try await store.put("claim", fileAt: try fixture.writeFile("seven", [7]), condition: .ifAbsent)
        }
        #expect(try await store.head("claim")?.etag == fromFile)
        await #expect(throws: StoreError.preconditionFailed(key: "nothing")) {
            try await store.put("nothing", bytes: [8], condition: .ifMatch(etag: created))
        }
        #expect(try await store.head("nothing") == nil)
    }

    @Test(arguments: StoreBackend.all)
    func invalidKeysAndPrefixesAreRejected(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let store = fixture.store
        // "/" followed by a combining mark is one Character, but still a separator.
        for key in ["", "/abs", "../x", "a/../../x", "a//b", "a/./b", "a/", ".", "..", "a\0b", "../\u{301}x", "a/./\u{301}"] {
            await #expect(throws: StoreError.self, "put \(key.debugDescription)") { try await store.put(key, bytes: [1]) }
            await #expect(throws: StoreError.self) { try await store.get(key) }
            await #expect(throws: StoreError.self) { try await store.head(key) }
            await #expect(throws: StoreError.self) { try await store.download(key, toFileAt: fixture.scratch.file("out")) }
            await #expect(throws: StoreError.self) { try await store.delete(["fine", key]) }
        }
        for prefix in ["../", "/", "a//", "a/../b", "a\0"] {
            await #expect(throws: StoreError.self, "list \(prefix.debugDescription)") { try await store.list(prefix: prefix) }
        }
        await #expect(throws: StoreError.self) { try await store.get("fine", range: -1...3) }
        #expect(try await store.list(prefix: "").isEmpty)
    }

    @Test(arguments: StoreBackend.all)
    func putFromAMissingFileIsALocalIOError(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        let store = fixture.store
        let error = await #expect(throws: StoreError.self) {
            try await store.put("sessions/abc/base", fileAt: fixture.scratch.file("does-not-exist"), condition: nil)
        }
        guard case .io(let reason) = error else {
            Issue.record("expected a local I/O error, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("does-not-exist"))
        #expect(try await store.head("sessions/abc/base") == nil)
    }

    @Test(arguments: StoreBackend.all)
    func locationNamesTheBackend(backend: StoreBackend) async throws {
        let fixture = try await backend.makeStore()
        switch backend.kind {
        case .fileSystem:
            let root = (fixture.scratch.path + "/store").replacingOccurrences(of: "//", with: "/")
            #expect(fixture.store.location == "file://\(root)")
        case .s3: #expect(fixture.store.location.hasPrefix("s3://t-") && fixture.store.location.hasSuffix("/store"))
        }
    }
}

/// What only the local store has to guarantee itself: atomic files, locking, and a root
/// that nothing escapes.
@Suite("Filesystem store")
struct FileSystemStoreTests {
    /// Two stores on one root stand for two processes (`backup` beside `watch`): each opens
    /// the lock file on its own, so the flock serialises them as it would across processes.
    @Test
    func racingConditionalWritersHaveExactlyOneWinner() async throws {
        let scratch = try TemporaryDirectory()
        let stores = [try FileSystemStore(root: scratch.file("store")), try FileSystemStore(root: scratch.file("store"))]
        // Every write distinct: the ETag is the content's MD5, so rewriting the same bytes
        // would leave a matching ETag for the next writer (as in S3).
        var etag = try await stores[0].put("sessions/abc/lease", bytes: [0, 0], condition: .ifAbsent)
        for round in 1...20 {
            let winners = try await withThrowingTaskGroup(of: (UInt8, String)?.self) { group in
                for writer in UInt8(0)..<8 {
                    group.addTask { [etag] in
                        do throws(StoreError) {
                            let store = stores[Int(writer) % 2]
                            let bytes = [UInt8(round), writer]
                            return (writer, try await store.put("sessions/abc/lease", bytes: bytes, condition: .ifMatch(etag: etag)))
                        } catch .preconditionFailed {
                            return nil
                        }
                    }
                }
                var winners: [(UInt8, String)] = []
                for try await case let winner? in group { winners.append(winner) }
                return winners
            }
            try #require(winners.count == 1, "round \(round): \(winners.count) writers won")
            #expect(try await stores[1].get("sessions/abc/lease")?.bytes == [UInt8(round), winners[0].0])
            etag = winners[0].1
        }

        let claims = try await withThrowingTaskGroup(of: Bool.self) { group in
            for writer in UInt8(0)..<8 {
                group.addTask {
                    do throws(StoreError) {
                        try await stores[Int(writer) % 2].put("sessions/new/lease", bytes: [writer], condition: .ifAbsent)
                        return true
                    } catch .preconditionFailed {
                        return false
                    }
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(claims == 1)
    }

    @Test
    func putsLeaveNoTemporaryFiles() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("store"))
        let etag = try await store.put("a/b/c", bytes: randomBytes(100_000))
        try await store.put("a/b/c", bytes: [1], condition: .ifMatch(etag: etag))
        _ = try? await store.put("a/b/c", bytes: [2], condition: .ifMatch(etag: etag))
        _ = try? await store.put("a/b/c", bytes: [3], condition: .ifAbsent)
        _ = try? await store.put("a/b/c/d", bytes: [4])
        _ = try? await store.put("a/b/d", fileAt: scratch.file("missing"), condition: nil)
        try Data([5]).write(to: URL(fileURLWithPath: scratch.file("five")))
        try await store.put("a/b/e", fileAt: scratch.file("five"), condition: .ifAbsent)
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.file("store/.tmp")).isEmpty)
        #expect(try await store.list(prefix: "").map(\.key) == ["a/b/c", "a/b/e"])
    }

    /// What a crash between writing and renaming leaves behind is never an object.
    @Test
    func leftoversOfACrashAreNotObjects() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("store"))
        try await store.put("sessions/abc/head", bytes: [1])
        try Data([9, 9]).write(to: URL(fileURLWithPath: scratch.file("store/.tmp/0123456789abcdef")))
        #expect(try await store.list(prefix: "").map(\.key) == ["sessions/abc/head"])
        #expect(try await store.list(prefix: ".").isEmpty)
        #expect(try await store.list(prefix: ".tmp/").isEmpty)
        #expect(try await store.get("sessions/abc/head")?.bytes == [1])
        // The reserved names cannot be reached as keys either.
        for key in [".tmp/0123456789abcdef", ".lock", ".tmp"] {
            await #expect(throws: StoreError.self) { try await store.get(key) }
            await #expect(throws: StoreError.self) { try await store.put(key, bytes: [1]) }
            await #expect(throws: StoreError.self) { try await store.delete([key]) }
        }
    }

    @Test
    func hostileKeysStayInsideTheRoot() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("store"))
        try Data("secret".utf8).write(to: URL(fileURLWithPath: scratch.file("secret")))
        let keys = [
            "../secret", "../../secret", "sessions/../../secret", "/\(scratch.file("secret"))", "./../secret",
            "../\u{301}secret", "../\u{301}/../\u{301}secret",
        ]
        for key in keys {
            await #expect(throws: StoreError.self) { try await store.put(key, bytes: [6]) }
            await #expect(throws: StoreError.self) { try await store.get(key) }
            await #expect(throws: StoreError.self) { try await store.delete([key]) }
            await #expect(throws: StoreError.self) { try await store.download(key, toFileAt: scratch.file("out")) }
        }
        await #expect(throws: StoreError.self) { try await store.list(prefix: "../") }
        #expect(try String(contentsOfFile: scratch.file("secret"), encoding: .utf8) == "secret")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted() == ["secret", "store"])

        // A directory symlinked out of the root is not followed when writing.
        try FileManager.default.createDirectory(atPath: scratch.file("outside"), withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: scratch.file("store/link"), withDestinationPath: scratch.file("outside"))
        await #expect(throws: StoreError.self) { try await store.put("link/x", bytes: [7]) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.file("outside")).isEmpty)
        #expect(try await store.list(prefix: "").isEmpty)
    }

    @Test
    func filesAre0600AndDirectories0700() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("new/store"))
        try await store.put("sessions/abc/base", bytes: [1])
        try Data([2]).write(to: URL(fileURLWithPath: scratch.file("two")))
        try await store.put("sessions/abc/delta", fileAt: scratch.file("two"), condition: nil)
        func mode(_ path: String) throws -> Int? {
            try FileManager.default.attributesOfItem(atPath: scratch.file(path))[.posixPermissions] as? Int
        }
        for directory in ["new", "new/store", "new/store/.tmp", "new/store/sessions", "new/store/sessions/abc"] {
            #expect(try mode(directory) == 0o700, "\(directory)")
        }
        for file in ["new/store/sessions/abc/base", "new/store/sessions/abc/delta", "new/store/.lock"] {
            #expect(try mode(file) == 0o600, "\(file)")
        }
    }

    @Test
    func deleteRemovesEmptiedDirectoriesUpToTheRoot() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("store"))
        for key in ["sessions/abc/delta/1", "sessions/abc/delta/2", "sessions/abc/base", "sessions/xyz/base"] {
            try await store.put(key, bytes: [1])
        }
        try await store.delete(["sessions/abc/delta/1", "sessions/abc/delta/2", "sessions/abc/base"])
        let manager = FileManager.default
        #expect(!manager.fileExists(atPath: scratch.file("store/sessions/abc")))
        #expect(manager.fileExists(atPath: scratch.file("store/sessions/xyz/base")))
        try await store.delete(["sessions/xyz/base"])
        #expect(!manager.fileExists(atPath: scratch.file("store/sessions")))
        #expect(manager.fileExists(atPath: scratch.file("store")))
        #expect(try await store.list(prefix: "").isEmpty)
    }

    /// S3 allows "a" beside "a/b"; a directory cannot be both, and says so.
    @Test
    func aKeyCannotBeBothAnObjectAndADirectory() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("store"))
        try await store.put("a/b", bytes: [1])
        await #expect(throws: StoreError.self) { try await store.put("a", bytes: [2]) }
        await #expect(throws: StoreError.self) { try await store.put("a/b/c", bytes: [3]) }
        #expect(try await store.list(prefix: "").map(\.key) == ["a/b"])
    }

    @Test
    func anUnusableRootIsRefusedWithItsPath() throws {
        let scratch = try TemporaryDirectory()
        try Data([1]).write(to: URL(fileURLWithPath: scratch.file("file")))
        for root in [scratch.file("file"), scratch.file("file/store")] {
            let error = #expect(throws: StoreError.self) { try FileSystemStore(root: root) }
            #expect(error?.description.contains(scratch.file("file").replacingOccurrences(of: "//", with: "/")) == true,
                    "\(String(describing: error))")
        }
    }
}
