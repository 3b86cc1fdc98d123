import S3Client
import SessionCrypto
@testable import SyncEngine
import SystemSupport
import Testing

/// The compact session state against the dictionary it replaced: same lookups, same changes,
/// and FORMAT.md's digest.
@Suite("SessionState")
struct SessionStateTests {
    let key = EncryptionKey.generate()

    func record(_ content: String) -> FileRecord {
        FileRecord(size: Int64(content.utf8.count), contentID: key.contentID(of: Array(content.utf8)), fingerprint: nil)
    }

    @Test func namesAreInByteOrderAndFoundByName() {
        let files = ["z.json": record("z"), "é.json": record("é"), "a.json": record("a"), "a/b.json": record("ab"), "A": record("")]
        let state = SessionState(files)
        #expect(state.names == ["A", "a.json", "a/b.json", "z.json", "é.json"])
        #expect(state.count == 5)
        #expect(state.byteCount == files.values.reduce(0) { $0 + $1.size })
        for (name, record) in files { #expect(state[name] == record) }
        #expect(state["a"] == nil)
        #expect(state["b.json"] == nil)
        #expect(SessionState()["a"] == nil)
    }

    @Test func digestIsFormatsHashOfTheSortedLines() {
        // Sizes of one digit, of several, and 0 (spelled "0").
        let files = [
            "creds.json": record("{}"), "sub/x.json": record("[1]"), "pre-key-1.json": record(#"{"k":1}"#),
            "empty.json": record(""), "large.json": record(String(repeating: "x", count: 1_234_567)),
        ]
        let digest = StreamingDigest(.sha256)
        for name in files.keys.sorted() {
            digest.update(Array("\(name)\0\(files[name]!.size)\0\(files[name]!.contentID)\n".utf8))
        }
        #expect(SessionState(files).digest == digest.finalize().lowercaseHex)
        #expect(SessionState().digest == StreamingDigest(.sha256).finalize().lowercaseHex)
    }

    @Test func namesBelowADirectoryAndNamesAbsentFromAnother() {
        let state = SessionState(["sub.json": record("1"), "sub/a": record("2"), "sub/b": record("3"), "sub2/c": record("4")])
        #expect(state.names(inDirectory: "sub") == ["sub/a", "sub/b"])
        #expect(state.names(inDirectory: "su").isEmpty)
        #expect(state.names(inDirectory: "sub2") == ["sub2/c"])
        let other = SessionState(["sub/b": record("3"), "zzz": record("5")])
        #expect(state.names(absentFrom: other) == ["sub.json", "sub/a", "sub2/c"])
        #expect(other.names(absentFrom: state) == ["zzz"])
        #expect(state.names(absentFrom: SessionState()) == state.names)
    }

    /// Random changes, checked against the same changes made to a dictionary.
    @Test func applyingChangesMatchesADictionary() {
        let names = (0..<40).map { "f\($0 % 7)/\($0).json" } + ["a", "é", "z/", ""]
        for round in 0..<200 {
            var model: [String: FileRecord] = [:]
            for name in names where Bool.random() { model[name] = record("\(round) \(name)") }
            let state = SessionState(model)
            var changes: [String: FileRecord?] = [:]
            for name in names.shuffled().prefix(Int.random(in: 0...10)) {
                changes[name] = Bool.random() ? .some(nil) : record("changed \(round) \(name)")
            }
            for (name, change) in changes { model[name] = change }
            let applied = state.applying(changes.map { ($0.key, $0.value) })
            #expect(applied.names == model.keys.sorted(by: SessionState.precedes), "round \(round)")
            for (name, record) in model { #expect(applied[name] == record) }
            #expect(applied.byteCount == model.values.reduce(0) { $0 + $1.size })
            #expect(applied.digest == SessionState(model).digest)
        }
    }

    @Test func builderTakesFilesInAnyOrderAndRefusesANameTwice() {
        let names = ["a", "b/c", "b.json", "é", "A", "z"]
        for order in [names.sorted(by: SessionState.precedes), names, names.reversed()] {
            var builder = SessionState.Builder()
            let added = order.map { builder.add($0, record($0)) }
            #expect(added.allSatisfy { $0 })
            let addedAgain = builder.add(order[2], record("again"))
            #expect(!addedAgain)
            let state = builder.build()
            #expect(state.names == names.sorted(by: SessionState.precedes))
            #expect(state.map(\.record) == state.names.map { record($0) })
        }
    }
}
