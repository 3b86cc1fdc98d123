import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// A parsed S3 XML response: just elements and their text, which is all S3 answers carry.
/// Parsing is bounded (size, depth, element count) and never resolves external entities,
/// so a hostile or broken server cannot make the client misbehave, only fail clearly.
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

    package static func parse(_ bytes: [UInt8]) throws(S3ClientError) -> XMLElement {
        guard bytes.count <= maxBytes else { throw .invalidResponse("XML response larger than \(maxBytes) bytes") }
        // Two crashes in FoundationXML, found by fuzz/FuzzS3XML, that a broken server (or anything
        // between it and the agent) could cause with one response: libxml2 passes names that are
        // not UTF-8 on, and FoundationXML traps converting them to String; a processing
        // instruction without data ("<?l?>", or one a DTD's entity expands to) makes it call
        // strlen(NULL). S3 answers in UTF-8 with elements and text only.
        guard String(validating: bytes, as: UTF8.self) != nil else { throw .invalidResponse("XML response is not UTF-8") }
        guard hasOnlyElementsAndText(bytes) else {
            throw .invalidResponse("XML response with a processing instruction, DTD, comment or CDATA section")
        }
        let builder = TreeBuilder()
        let parser = XMLParser(data: Data(bytes))
        parser.shouldResolveExternalEntities = false
        parser.shouldProcessNamespaces = false
        parser.delegate = builder
        let parsed = parser.parse()
        if let limit = builder.limitExceeded { throw .invalidResponse(limit) }
        guard parsed, let root = builder.root else {
            let reason = parser.parserError.map { "\($0.localizedDescription)" } ?? "no root element"
            throw .invalidResponse("malformed XML response: \(reason)")
        }
        return root
    }

    /// Whether the document, after its XML declaration if any, has no markup but elements: no
    /// `<?` and no `<!`.
    private static func hasOnlyElementsAndText(_ bytes: [UInt8]) -> Bool {
        let (less, question, bang, greater) = (UInt8(ascii: "<"), UInt8(ascii: "?"), UInt8(ascii: "!"), UInt8(ascii: ">"))
        var index = 0
        if bytes.starts(with: Array("<?xml ".utf8)) {
            index = 6
            while index + 1 < bytes.count, bytes[index] != question || bytes[index + 1] != greater {
                if bytes[index] == less { return false }
                index += 1
            }
            index += 2
        }
        while index + 1 < bytes.count {
            if bytes[index] == less, bytes[index + 1] == question || bytes[index + 1] == bang { return false }
            index += 1
        }
        return true
    }

    private final class TreeBuilder: NSObject, XMLParserDelegate {
        var stack: [XMLElement] = []
        var root: XMLElement?
        var elementCount = 0
        var limitExceeded: String?

        func parser(
            _ parser: XMLParser, didStartElement name: String, namespaceURI: String?,
            qualifiedName: String?, attributes: [String: String] = [:]
        ) {
            elementCount += 1
            if stack.count >= XMLElement.maxDepth || elementCount > XMLElement.maxElements {
                limitExceeded = "XML response nested deeper than \(XMLElement.maxDepth) or with more than \(XMLElement.maxElements) elements"
                parser.abortParsing()
                return
            }
            stack.append(XMLElement(name: name, text: "", children: []))
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            guard !stack.isEmpty else { return }
            stack[stack.count - 1].text += string
        }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            guard let element = stack.popLast() else { return }
            if stack.isEmpty {
                root = element
            } else {
                stack[stack.count - 1].children.append(element)
            }
        }

        func parser(_ parser: XMLParser, resolveExternalEntityName name: String, systemID: String?) -> Data? {
            nil
        }
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
