/// A parsed S3 XML response: just elements and their text, which is all S3 answers carry.
/// Parsing (`XMLReader`) is bounded (size, depth, element count, name and text length), never
/// touches the network and never expands entities of a document's own or reads a DTD, so a
/// hostile or broken server cannot make the client misbehave, only fail clearly.
package struct XMLElement: Sendable, Equatable {
    var name: String
    var text: String
    var children: [XMLElement]

    func child(_ name: String) -> XMLElement? { children.first { $0.name == name } }
    func children(_ name: String) -> [XMLElement] { children.filter { $0.name == name } }
    func text(of name: String) -> String? { child(name)?.text }

    static let maxBytes = 64 << 20
    static let maxDepth = 32
    static let maxElements = 1_000_000
    /// libxml2's own limits without XML_PARSE_HUGE, which the client parsed with before.
    static let maxNameBytes = 50_000
    static let maxTextBytes = 10_000_000

    package static func parse(_ bytes: [UInt8]) throws(S3ClientError) -> XMLElement {
        guard bytes.count <= maxBytes else { throw .invalidResponse("XML response larger than \(maxBytes) bytes") }
        var reader = XMLReader(bytes)
        return try reader.document()
    }
}

/// Escapes text for an XML request body (DeleteObjects, CompleteMultipartUpload).
func xmlEscaped(_ text: String) -> String {
    var escaped = ""
    escaped.reserveCapacity(text.utf8.count)
    for character in text {
        switch character {
        case "&": escaped += "&amp;"
        case "<": escaped += "&lt;"
        case ">": escaped += "&gt;"
        case "\"": escaped += "&quot;"
        case "'": escaped += "&apos;"
        default: escaped.append(character)
        }
    }
    return escaped
}
