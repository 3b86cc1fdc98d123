import S3Client
import SessionCrypto
@testable import SyncEngine
import SystemSupport
import Testing
import TestSupport

/// The compact session state against the dictionary it replaced: same lookups, same changes,
/// and FORMAT.md's digests.
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

    @Test func digestOfVersion3IsFormatsHashOfTheSortedLines() {
        // Sizes of one digit, of several, and 0 (spelled "0").
        let files = [
            "creds.json": record("{}"), "sub/x.json": record("[1]"), "pre-key-1.json": record(#"{"k":1}"#),
            "empty.json": record(""), "large.json": record(String(repeating: "x", count: 1_234_567)),
        ]
        let digest = StreamingDigest(.sha256)
        for name in files.keys.sorted() {
            digest.update(Array("\(name)\0\(files[name]!.size)\0\(files[name]!.contentID)\n".utf8))
        }
        #expect(SessionState(files).digest(formatVersion: 3) == digest.finalize().lowercaseHex)
        #expect(SessionState().digest(formatVersion: 3) == StreamingDigest(.sha256).finalize().lowercaseHex)
        #expect(SessionState().digest(formatVersion: 2) == StreamingDigest(.sha256).finalize().lowercaseHex)
    }

    /// FORMAT.md's worked example of version 4: two lines' hashes added as little-endian
    /// integers, with carries; no files is 64 zeros, kept or computed.
    @Test func digestOfVersion4IsFormatsSumOfTheLinesHashes() {
        let files = [
            "creds.json": FileRecord(size: 3, contentID: ContentID(hex: String(repeating: "ab", count: 32))!, fingerprint: nil),
            "keys/a\n.json": FileRecord(size: 0, contentID: ContentID(hex: String(repeating: "0", count: 64))!, fingerprint: nil),
        ]
        #expect(SessionState(files).digest(formatVersion: 4) == "ce0a9c3941b15bb874821266c3b7b12914a6db3a3a7a3c0511b2c5889bb65b32")
        var kept = SessionState()
        kept.keepDigest()
        #expect(kept.digest(formatVersion: 4) == String(repeating: "0", count: 64))
        for (name, record) in files { kept.set(name, record) }
        #expect(kept.digest(formatVersion: 4) == "ce0a9c3941b15bb874821266c3b7b12914a6db3a3a7a3c0511b2c5889bb65b32")
        for name in files.keys { kept.set(name, nil) }
        #expect(kept.digest(formatVersion: 4) == String(repeating: "0", count: 64))
        #expect(SessionState().digest(formatVersion: 4) == String(repeating: "0", count: 64))
    }

    /// The digest a state keeps, updated change by change, is the one computed from scratch for
    /// the same files, after every step of a seeded random history of creations, rewrites and
    /// deletions over enough files to split runs and empty some; lookups, counts and the pre-key
    /// count (`topLevelCount`) follow too.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func theKeptDigestIsTheDigestRecomputedAfterRandomChanges(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        func name() -> String {
            let number = Int.random(in: 0..<3000, using: &random)
            return switch number % 5 {
            case 0: "pre-key-\(number).json"
            case 1: "pre-key-\(number)/nested.json"
            case 2: "session-\(number).json"
            case 3: "é/\(number)"
            default: "app-state-sync-key-\(number).json"
            }
        }
        var model: [String: FileRecord] = [:]
        for _ in 0..<1500 { model[name()] = record("\(random.next())") }
        var state = SessionState(model)
        state.keepDigest()
        for step in 0..<2000 {
            if Bool.random(using: &random) {
                // One change at a time.
                // Of 3,000 names, half are files: a name is created or rewritten or deleted as often.
                let changed = name()
                let change: FileRecord? = Int.random(in: 0..<3, using: &random) == 0 ? nil : record("\(random.next())")
                model[changed] = change
                state.set(changed, change)
            } else {
                // An upload's changes, a name possibly twice (the last stands).
                let changes: [(name: String, record: FileRecord?)] = (0..<Int.random(in: 0..<40, using: &random)).map { _ in
                    (name(), Bool.random(using: &random) ? nil : record("\(random.next())"))
                }
                for (name, record) in changes { model[name] = record }
                state = state.applying(changes)
            }
            guard step % 50 == 0 || step == 1999 else { continue }
            let recomputed = SessionState(model)
            #expect(state.digest(formatVersion: 4) == recomputed.digest(formatVersion: 4), "seed \(seed), step \(step)")
            #expect(state.digest(formatVersion: 3) == recomputed.digest(formatVersion: 3), "seed \(seed), step \(step)")
            #expect(state.names == recomputed.names, "seed \(seed), step \(step)")
            #expect((state.count, state.byteCount) == (model.count, model.values.reduce(0) { $0 + $1.size }))
            #expect(state.topLevelCount(withPrefix: "pre-key-") == model.keys.filter { $0.hasPrefix("pre-key-") && !$0.contains("/") }.count)
            for name in model.keys.prefix(20) { #expect(state[name] == model[name]) }
        }
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
            #expect(applied.digest(formatVersion: 3) == SessionState(model).digest(formatVersion: 3))
            #expect(applied.digest(formatVersion: 4) == SessionState(model).digest(formatVersion: 4))
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
