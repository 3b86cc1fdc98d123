import Foundation
import StoreConformance
import SyncEngine
import TestSupport
import Testing

/// The `ObjectStore` contract on the filesystem store; S3StoreTests runs it on the S3 servers.
@Suite("The filesystem store conforms to ObjectStore")
struct FileSystemStoreConformanceTests {
    @Test(arguments: objectStoreConformanceCases)
    func conforms(_ contract: ObjectStoreConformanceCase) async throws {
        try await contract.run(on: .fileSystem)
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
        var etag = try await stores[0].put("sessions/abc/lease", body: .bytes([0, 0]), condition: .ifAbsent)
        for round in 1...20 {
            let winners = try await withThrowingTaskGroup(of: (UInt8, String)?.self) { group in
                for writer in UInt8(0)..<8 {
                    group.addTask { [etag] in
                        do throws(StoreError) {
                            let store = stores[Int(writer) % 2]
                            let bytes = [UInt8(round), writer]
                            return (writer, try await store.put("sessions/abc/lease", body: .bytes(bytes), condition: .ifMatch(etag: etag)))
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
                        try await stores[Int(writer) % 2].put("sessions/new/lease", body: .bytes([writer]), condition: .ifAbsent)
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
        let fixture = StoreFixture(store: store, scratch: scratch)
        let etag = try await store.put("a/b/c", body: .bytes(randomBytes(100_000)), condition: nil)
        try await store.put("a/b/c", body: .bytes([1]), condition: .ifMatch(etag: etag))
        _ = try? await store.put("a/b/c", body: .bytes([2]), condition: .ifMatch(etag: etag))
        _ = try? await store.put("a/b/c", body: .bytes([3]), condition: .ifAbsent)
        _ = try? await store.put("a/b/c/d", body: .bytes([4]), condition: nil)
        _ = try? await store.put("a/b/d", body: try fixture.unreadableBody(), condition: nil)
        try await store.put("a/b/e", body: try fixture.fileBody("five", [5]), condition: .ifAbsent)
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.file("store/.tmp")).isEmpty)
        #expect(try await store.list(prefix: "").map(\.key) == ["a/b/c", "a/b/e"])
    }

    /// What a crash between writing and renaming leaves behind is never an object.
    @Test
    func leftoversOfACrashAreNotObjects() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("store"))
        try await store.put("sessions/abc/head", body: .bytes([1]), condition: nil)
        try Data([9, 9]).write(to: URL(fileURLWithPath: scratch.file("store/.tmp/0123456789abcdef")))
        #expect(try await store.list(prefix: "").map(\.key) == ["sessions/abc/head"])
        #expect(try await store.list(prefix: ".").isEmpty)
        #expect(try await store.list(prefix: ".tmp/").isEmpty)
        #expect(try await store.get("sessions/abc/head")?.bytes == [1])
        // The reserved names cannot be reached as keys either.
        for key in [".tmp/0123456789abcdef", ".lock", ".tmp"] {
            await #expect(throws: StoreError.self) { try await store.get(key) }
            await #expect(throws: StoreError.self) { try await store.put(key, body: .bytes([1]), condition: nil) }
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
            await #expect(throws: StoreError.self) { try await store.put(key, body: .bytes([6]), condition: nil) }
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
        await #expect(throws: StoreError.self) { try await store.put("link/x", body: .bytes([7]), condition: nil) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.file("outside")).isEmpty)
        #expect(try await store.list(prefix: "").isEmpty)
    }

    @Test
    func filesAre0600AndDirectories0700() async throws {
        let scratch = try TemporaryDirectory()
        let store = try FileSystemStore(root: scratch.file("new/store"))
        let fixture = StoreFixture(store: store, scratch: scratch)
        try await store.put("sessions/abc/base", body: .bytes([1]), condition: nil)
        try await store.put("sessions/abc/delta", body: try fixture.fileBody("two", [2]), condition: nil)
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
            try await store.put(key, body: .bytes([1]), condition: nil)
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
        try await store.put("a/b", body: .bytes([1]), condition: nil)
        await #expect(throws: StoreError.self) { try await store.put("a", body: .bytes([2]), condition: nil) }
        await #expect(throws: StoreError.self) { try await store.put("a/b/c", body: .bytes([3]), condition: nil) }
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
