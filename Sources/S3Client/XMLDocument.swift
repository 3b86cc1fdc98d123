import CXML2
import SystemSupport

/// A parsed S3 XML response: just elements and their text, which is all S3 answers carry.
/// Parsing is bounded (size, depth, element count), never touches the network and never
/// loads external entities or DTDs, so a hostile or broken server cannot make the client
/// misbehave, only fail clearly.
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

    /// libxml2's streaming reader (xmlTextReader): one node at a time, so the limits are
    /// checked as the document is read, before a hostile one has been built in memory.
    package static func parse(_ bytes: [UInt8]) throws(S3ClientError) -> XMLElement {
        guard bytes.count <= maxBytes else { throw .invalidResponse("XML response larger than \(maxBytes) bytes") }
        _ = libxml2Initialized
        // No network, no entity substitution (so no external or exponentially nested
        // entities), no DTD loading, and no errors printed to stderr: they are reported here.
        let options = Int32(bitPattern: XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
        let reader = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { xmlReaderForMemory($0.baseAddress, Int32(buffer.count), nil, nil, options) }
        }
        guard let reader else { throw .invalidResponse("malformed XML response: empty document") }
        defer { xmlFreeTextReader(reader) }

        var stack: [XMLElement] = []
        var root: XMLElement?
        var elementCount = 0
        func close() {
            let element = stack.removeLast()
            if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
        }
        while true {
            let status = xmlTextReaderRead(reader)
            if status == 0 { break }
            guard status == 1 else { throw .invalidResponse("malformed XML response: \(lastErrorMessage())") }
            switch xmlTextReaderNodeType(reader) {
            case Int32(XML_READER_TYPE_ELEMENT.rawValue):
                elementCount += 1
                guard stack.count < maxDepth, elementCount <= maxElements else {
                    throw .invalidResponse(
                        "XML response nested deeper than \(maxDepth) or with more than \(maxElements) elements")
                }
                stack.append(XMLElement(name: string(xmlTextReaderConstName(reader)), text: "", children: []))
                // An empty element (<Prefix/>) has no end node of its own.
                if xmlTextReaderIsEmptyElement(reader) == 1 { close() }
            case Int32(XML_READER_TYPE_END_ELEMENT.rawValue):
                if !stack.isEmpty { close() }
            case Int32(XML_READER_TYPE_TEXT.rawValue), Int32(XML_READER_TYPE_CDATA.rawValue),
                Int32(XML_READER_TYPE_SIGNIFICANT_WHITESPACE.rawValue):
                if !stack.isEmpty { stack[stack.count - 1].text += string(xmlTextReaderConstValue(reader)) }
            case Int32(XML_READER_TYPE_DOCUMENT_TYPE.rawValue), Int32(XML_READER_TYPE_ENTITY_REFERENCE.rawValue):
                // S3 never sends a DTD; one is only ever a way to smuggle in entities.
                throw .invalidResponse("XML response with a document type declaration or entity references")
            default:
                // Comments, processing instructions, the XML declaration.
                continue
            }
        }
        guard let root else { throw .invalidResponse("malformed XML response: no root element") }
        return root
    }

    private static func string(_ text: UnsafePointer<xmlChar>?) -> String {
        text.map { String(cString: $0) } ?? ""
    }

    private static func lastErrorMessage() -> String {
        guard let error = xmlGetLastError(), let message = error.pointee.message else { return "unreadable document" }
        let text = String(String(cString: message).trimmingWhitespace())
        return error.pointee.line > 0 ? "\(text) (line \(error.pointee.line))" : text
    }
}

/// libxml2 must be initialized once, before threads use it concurrently.
private let libxml2Initialized: Void = xmlInitParser()

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
