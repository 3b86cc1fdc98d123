import FoundationEssentials
import SessionArchive
import SystemSupport

/// A list of session ids handed to `restore --sessions-from`: one id per line, or the JSON a
/// gateway backend returns for a worker's assigned sessions, an array of objects with an `id`
/// (a string or an integer: phone numbers come both ways), bare or as `{"data":{"sessions":[…]}}`.
public enum SessionList {
    /// The ids in order, each once. Any line or element that is not a valid id fails the whole
    /// list: restoring part of what was asked for, silently, is worse than stopping.
    public static func parse(_ bytes: [UInt8]) throws(SessionListError) -> [SessionID] {
        let names: [(place: String, name: String)]
        switch bytes.first(where: { !isWhitespace($0) }) {
        case UInt8(ascii: "["):
            names = try listed(decoding: [Listed].self, from: bytes) { $0 }
        case UInt8(ascii: "{"):
            names = try listed(decoding: Envelope.self, from: bytes) { $0.data.sessions }
        default:
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw SessionListError("it is neither UTF-8 text nor JSON")
            }
            names = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated().compactMap { index, line in
                let name = String(line.trimmingWhitespace())
                return name.isEmpty ? nil : ("line \(index + 1)", name)
            }
        }
        var seen = Set<SessionID>()
        var ids: [SessionID] = []
        for (place, name) in names {
            guard let id = SessionID(printed: name) else { throw SessionListError("\(place): \"\(FileName.displayed(name))\" is not a valid session id") }
            if seen.insert(id).inserted { ids.append(id) }
        }
        return ids
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool { [0x20, 0x09, 0x0A, 0x0D].contains(byte) }

    private struct Listed: Decodable {
        let id: String

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            if let number = try? container.decode(Int64.self, forKey: .id) {
                id = String(number)
            } else {
                id = try container.decode(String.self, forKey: .id)
            }
        }

        private enum CodingKeys: String, CodingKey { case id }
    }

    private struct Envelope: Decodable {
        struct Payload: Decodable { let sessions: [Listed] }
        let data: Payload
    }

    private static func listed<Document: Decodable>(
        decoding type: Document.Type, from bytes: [UInt8], sessions: (Document) -> [Listed]
    ) throws(SessionListError) -> [(place: String, name: String)] {
        do {
            let document = try JSONDecoder().decode(type, from: Data(bytes))
            return sessions(document).enumerated().map { ("session \($0.offset + 1)", $0.element.id) }
        } catch let error as DecodingError {
            throw SessionListError(describing: error)
        } catch {
            throw SessionListError("\(error)")
        }
    }
}

/// Why a session list was refused: one line naming the place.
public struct SessionListError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String

    init(_ reason: String) {
        description = "the session list is malformed: \(reason)"
    }

    /// DecodingError's own descriptions are multi-line dumps of its context.
    init(describing error: DecodingError) {
        func place(_ path: [any CodingKey]) -> String {
            let text = path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return text.isEmpty ? "the document" : String(text.drop { $0 == "." })
        }
        switch error {
        case .keyNotFound(let key, let context):
            self.init("\(place(context.codingPath)) has no \"\(key.stringValue)\"; expected an array of objects with an \"id\", or {\"data\":{\"sessions\":[…]}}")
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            self.init("\(place(context.codingPath)): \(context.debugDescription)")
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            self.init("it is not valid JSON")
        case .dataCorrupted(let context):
            self.init("\(place(context.codingPath)): \(context.debugDescription)")
        @unknown default:
            self.init("\(error)")
        }
    }
}
