import Foundation
import SyncEngine
import Testing

/// `restore --sessions-from`: what a gateway hands the worker, and what must be refused whole.
@Suite("Session lists")
struct SessionListTests {
    func parse(_ text: String) throws -> [String] {
        try SessionList.parse(Array(text.utf8)).map(\.rawValue)
    }

    @Test func oneIdPerLineWithBlankLinesAndRepeats() throws {
        #expect(try parse("4915112345678\n\n  alice@s.whatsapp.net \r\n4915112345678\n") == ["4915112345678", "alice@s.whatsapp.net"])
        #expect(try parse("") == [])
    }

    @Test func theGatewaysTwoJSONShapes() throws {
        #expect(try parse(#"[{"id":"a","status":"connected"},{"id":4915112345678}]"#) == ["a", "4915112345678"])
        #expect(try parse(#" {"data":{"sessions":[{"id":"b"},{"id":"c","name":"x"}]},"ok":true}"#) == ["b", "c"])
        #expect(try parse(#"{"data":{"sessions":[]}}"#) == [])
    }

    @Test(arguments: [
        ("a\n../etc\n", "line 2: \"../etc\" is not a valid session id"),
        (#"[{"id":"a"},{"name":"b"}]"#, "[1] has no \"id\""),
        (#"{"data":{"sessions":[{"id":true}]}}"#, "data.sessions[0]"),
        (#"{"sessions":[{"id":"a"}]}"#, "has no \"data\""),
        (#"[{"id":"a"},"#, "it is not valid JSON"),
        (#"[{"id":".hidden"}]"#, "session 1: \".hidden\" is not a valid session id"),
        (#"[{"id":"a\nFAKE line"}]"#, #"session 1: "a\nFAKE line" is not a valid session id"#),
    ])
    func malformedListsAreRefusedWithOneLineSayingWhere(_ text: String, _ expected: String) throws {
        let error = try #require(throws: SessionListError.self) { try parse(text) }
        #expect(error.description.contains(expected), "\(error)")
        #expect(!error.description.contains("\n"), "\(error)")
    }
}
