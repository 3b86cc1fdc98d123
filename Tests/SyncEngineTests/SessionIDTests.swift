import SessionArchive
@testable import SyncEngine
import TestSupport
import Testing

/// Session ids of any name a directory can have, in keys and in print.
@Suite("Session ids")
struct SessionIDTests {
    @Test func namesOfTheSafeSetKeepTheirPlainKeys() throws {
        for name in ["4915112345678", "alice@s.whatsapp.net", "a+b=c_d-e.f", String(repeating: "z", count: 200)] {
            let id = try #require(SessionID(name))
            #expect(SessionPlace.plain(id).headKey == "sessions/\(name)/head")
            #expect(id.description == name)
        }
    }

    @Test(arguments: [
        "", ".hidden", ".x.sync-agent-staging-0123456789abcdef", "a/b", "a\u{0}b", String(repeating: "z", count: 256),
        String(repeating: "é", count: 128),
    ])
    func namesNoSessionDirectoryCanHaveAreRefused(_ name: String) {
        #expect(SessionID(name) == nil)
    }

    /// Random names of 1 to 255 bytes, UTF-8 or not: each one's key lists back to it, its
    /// printed spelling reads back to it and is printable, and no session's keys fall under
    /// another's prefix.
    @Test(arguments: 1...4)
    func everyNameHasOneKeyAndOneSpellingThatReadBack(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        var ids: [SessionID] = []
        for _ in 0..<300 {
            var bytes = (0..<Int.random(in: 1...255, using: &random)).map { _ in UInt8.random(in: 1...255, using: &random) }
            bytes = bytes.map { $0 == UInt8(ascii: "/") ? UInt8(ascii: "~") : $0 }
            if bytes[0] == UInt8(ascii: ".") { bytes[0] = UInt8(ascii: "s") }
            let id = try #require(SessionID(FileName.decode(bytes)))
            #expect(FileName.bytes(of: id.rawValue) == bytes)
            #expect(SessionLayout.plainSessionIDs(in: [SessionPlace.plain(id).headKey, SessionPlace.plain(id).snapshotsPrefix + "x"]) == [id])
            #expect(SessionID(printed: id.description) == id)
            #expect(!id.description.unicodeScalars.contains { $0.value < 0x20 || $0.value >= 0x10FF80 })
            let key = SessionPlace.plain(id).headKey
            #expect(key.utf8.allSatisfy { (0x21...0x7E).contains($0) }, "\(key)")
            #expect(key.split(separator: "/").allSatisfy { $0.utf8.count <= 255 }, "\(key)")
            ids.append(id)
        }
        ids += ["a", "~", "~61", "x~"].compactMap { SessionID($0) }
        for first in ids {
            for second in ids where first != second {
                #expect(!SessionPlace.plain(second).prefix.hasPrefix(SessionPlace.plain(first).prefix))
            }
        }
    }

    /// Keys another writer could make for a session in another spelling (an unsafe name as it
    /// is, a safe one in hex, other chunks) are not sessions: one session, one key.
    @Test func onlyTheWritersSpellingIsListed() {
        #expect(SessionLayout.plainSessionIDs(in: ["sessions/a b/head", "sessions/~61/head", "sessions/~6~/~62/head", "sessions/~6/head"]) == [])
        #expect(SessionLayout.plainSessionIDs(in: ["sessions/~6120/head", "sessions/a/head"]).map { $0.rawValue } == ["a", "a "])
    }

    /// "é" as one scalar and as "e" + U+0301 are two directories: two sessions with keys of their
    /// own, both listed, though Swift's Strings take them for one.
    @Test func canonicallyEquivalentNamesAreTwoSessions() throws {
        let composed = try #require(SessionID("caf\u{E9}"))
        let decomposed = try #require(SessionID("cafe\u{301}"))
        #expect(composed != decomposed && Set([composed, decomposed]).count == 2)
        #expect(composed.keyComponent != decomposed.keyComponent)
        let keys = [composed, decomposed].map { SessionPlace.plain($0).headKey }
        #expect(Set(SessionLayout.plainSessionIDs(in: keys)) == [composed, decomposed])
    }

    @Test func unprintableNamesAreSpelledInHex() throws {
        #expect(try #require(SessionID("x\nFAKE line")).description == "~780a46414b45206c696e65")
        #expect(try #require(SessionID(" lead")).description == "~206c656164")
        #expect(try #require(SessionID("~tilde")).description == "~7e74696c6465")
        #expect(try #require(SessionID("a\\b")).description == "~615c62")
        #expect(try #require(SessionID("naïve name")).description == "naïve name")
        #expect(SessionID(printed: "~7e74696c6465")?.rawValue == "~tilde")
        #expect(SessionID(printed: "~tilde") == nil)
        #expect(SessionID(printed: "~780A") == nil)
        #expect(SessionID(printed: " lead") == nil)
    }

    /// A refused argument says why: the parser alone said only that the value was invalid.
    @Test(arguments: [
        ("", InvalidSessionID.Reason.length), (String(repeating: "a", count: 256), .length), (".hidden", .hidden),
        ("a/b", .separator), ("a\0b", .separator), ("~2e68", .hidden), ("~612f62", .separator), ("~", .notHex),
        ("~tilde", .notHex), ("~780A", .notHex), ("x\nFAKE line", .notAsPrinted), (" lead", .notAsPrinted),
        ("\u{10FFC3}\u{10FFA9}", .notAsPrinted),
    ])
    func aRefusedSpellingSaysWhy(_ text: String, reason: InvalidSessionID.Reason) {
        let error = #expect(throws: InvalidSessionID.self) { try SessionID(parsing: text) }
        #expect(error?.reason == reason)
    }
}
