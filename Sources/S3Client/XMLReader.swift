/// Reads one S3 response document into an `XMLElement` tree: the XML 1.0 a server answers with
/// (elements, text, the five predefined entities and character references, CDATA sections,
/// comments, processing instructions, the XML declaration; attributes are checked and dropped),
/// in UTF-8, and nothing else. A document type declaration is refused outright, so no entity of
/// a server's own is ever expanded and nothing is ever loaded. One pass over the bytes, no
/// recursion; every limit is checked as the document is read, before a hostile one is built.
///
/// It replaces libxml2's streaming reader, which cost the agent libxml2 and the ICU it links
/// (resident in every process) for these few documents; the limits and refusals are those the
/// client had with libxml2.
struct XMLReader {
    private let bytes: [UInt8]
    private var position = 0

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// An element still open: its text so far (bytes, UTF-8 checked before reading) and the
    /// children it closed.
    private struct OpenElement {
        var name: String
        var start: Int
        var text: [UInt8] = []
        var children: [XMLElement] = []
    }

    mutating func document() throws(S3ClientError) -> XMLElement {
        try checkCharacters()
        if starts(with: [0xEF, 0xBB, 0xBF]) { position += 3 }
        try declaration()

        var open: [OpenElement] = []
        var root: XMLElement?
        var elementCount = 0
        func close() {
            let element = open.removeLast()
            let closed = XMLElement(name: element.name, text: String(decoding: element.text, as: UTF8.self), children: element.children)
            if open.isEmpty { root = closed } else { open[open.count - 1].children.append(closed) }
        }
        while position < bytes.count {
            guard bytes[position] == .lessThan else {
                if open.isEmpty {
                    try whitespaceOutsideTheRoot(afterRoot: root != nil)
                } else {
                    try characterData(into: &open[open.count - 1].text)
                }
                continue
            }
            if starts(with: "<!--") {
                try comment()
            } else if starts(with: "<?") {
                try processingInstruction()
            } else if starts(with: "<!DOCTYPE") {
                // S3 never sends a DTD; one is only ever a way to smuggle in entities.
                throw .invalidResponse("XML response with a document type declaration or entity references")
            } else if starts(with: "<![CDATA[") {
                guard !open.isEmpty else { throw malformed("CDATA section outside the root element") }
                try cdataSection(into: &open[open.count - 1].text)
            } else if starts(with: "</") {
                let start = position
                position += 2
                let name = try name()
                skipWhitespace()
                try expect(.greaterThan, "'>' expected at the end of the end tag")
                guard let element = open.last else { throw malformed("end tag </\(shown(name))> without a start tag", at: start) }
                guard element.name == name else {
                    throw malformed(
                        "opening and ending tag mismatch: \(shown(element.name)) line \(line(at: element.start)) and \(shown(name))",
                        at: start)
                }
                close()
            } else if starts(with: "<!") {
                throw malformed("markup of a kind S3 never sends ('<!' other than a comment or CDATA)")
            } else {
                guard root == nil else { throw malformed("extra content at the end of the document") }
                let start = position
                elementCount += 1
                guard open.count < XMLElement.maxDepth, elementCount <= XMLElement.maxElements else {
                    throw .invalidResponse(
                        "XML response nested deeper than \(XMLElement.maxDepth) or with more than \(XMLElement.maxElements) elements")
                }
                position += 1
                open.append(OpenElement(name: try name(), start: start))
                // An empty element (<Prefix/>) has no end tag of its own.
                if try attributesEndEmpty() { close() }
            }
        }
        if let element = open.last {
            throw malformed("premature end of data in tag \(shown(element.name)) line \(line(at: element.start))")
        }
        guard let root else { throw malformed("no root element") }
        return root
    }

    // MARK: - Characters

    /// The whole document is UTF-8 made of XML characters (no control characters but tab, line
    /// feed and carriage return; no U+FFFE, U+FFFF): checked once, so the rest reads bytes and
    /// every name and text it cuts out is valid UTF-8.
    private func checkCharacters() throws(S3ClientError) {
        var offset = 0
        while offset < bytes.count {
            let lead = bytes[offset]
            if lead < 0x80 {
                guard lead >= 0x20 || lead == .tab || lead == .lineFeed || lead == .carriageReturn else {
                    throw malformed("invalid character 0x\(String(lead, radix: 16, uppercase: true))", at: offset)
                }
                offset += 1
                continue
            }
            let length: Int
            let minimum: UInt32
            switch lead {
            case 0xC2...0xDF: (length, minimum) = (2, 0x80)
            case 0xE0...0xEF: (length, minimum) = (3, 0x800)
            case 0xF0...0xF4: (length, minimum) = (4, 0x10000)
            default: throw malformed("input is not proper UTF-8", at: offset)
            }
            guard offset + length <= bytes.count else { throw malformed("input is not proper UTF-8", at: offset) }
            var scalar = UInt32(lead) & (0xFF >> (length + 1))
            for continuation in bytes[(offset + 1)..<(offset + length)] {
                guard continuation & 0xC0 == 0x80 else { throw malformed("input is not proper UTF-8", at: offset) }
                scalar = scalar << 6 | UInt32(continuation & 0x3F)
            }
            guard scalar >= minimum, scalar <= 0x10FFFF, !(0xD800...0xDFFF).contains(scalar) else {
                throw malformed("input is not proper UTF-8", at: offset)
            }
            guard scalar != 0xFFFE, scalar != 0xFFFF else {
                throw malformed("invalid character U+\(String(scalar, radix: 16, uppercase: true))", at: offset)
            }
            offset += length
        }
    }

    /// Text inside an element up to the next markup, with its references replaced and its line
    /// ends made line feeds (XML's end-of-line handling).
    private mutating func characterData(into text: inout [UInt8]) throws(S3ClientError) {
        while position < bytes.count, bytes[position] != .lessThan {
            switch bytes[position] {
            case .ampersand:
                try reference(into: &text)
            case .carriageReturn:
                text.append(.lineFeed)
                position += bytes.count > position + 1 && bytes[position + 1] == .lineFeed ? 2 : 1
            case .rightBracket where starts(with: "]]>"):
                throw malformed("sequence ']]>' not allowed in content")
            case let byte:
                text.append(byte)
                position += 1
            }
        }
        try checkTextLength(text)
    }

    private mutating func cdataSection(into text: inout [UInt8]) throws(S3ClientError) {
        let start = position
        position += "<![CDATA[".utf8.count
        // Taken as it is, carriage returns included, as libxml2's reader gave it.
        while !starts(with: "]]>") {
            guard position < bytes.count else { throw malformed("CDATA section not terminated", at: start) }
            text.append(bytes[position])
            position += 1
        }
        position += 3
        try checkTextLength(text)
    }

    private func checkTextLength(_ text: [UInt8]) throws(S3ClientError) {
        guard text.count <= XMLElement.maxTextBytes else {
            throw .invalidResponse("XML response with a text value longer than \(XMLElement.maxTextBytes) bytes")
        }
    }

    /// `&amp;` and the other four predefined entities, or a character reference (`&#60;`,
    /// `&#x3C;`) to an XML character. Any other name is an entity a DTD would have to declare,
    /// and there is none.
    private mutating func reference(into text: inout [UInt8]) throws(S3ClientError) {
        let start = position
        position += 1
        if position < bytes.count, bytes[position] == .numberSign {
            position += 1
            let hexadecimal = position < bytes.count && bytes[position] == UInt8(ascii: "x")
            if hexadecimal { position += 1 }
            var value: UInt32 = 0
            var digits = 0
            while position < bytes.count, let digit = digitValue(bytes[position], hexadecimal: hexadecimal) {
                // Leading zeros aside, no character needs more than 7 digits; stop before overflowing.
                guard value <= 0x10FFFF else { throw malformed("character reference out of range", at: start) }
                value = value * (hexadecimal ? 16 : 10) + digit
                digits += 1
                position += 1
            }
            guard digits > 0, position < bytes.count, bytes[position] == .semicolon else {
                throw malformed("malformed character reference", at: start)
            }
            position += 1
            guard let scalar = Unicode.Scalar(value), isXMLCharacter(value) else {
                throw malformed("character reference &#\(hexadecimal ? "x" : "")\(String(value, radix: hexadecimal ? 16 : 10)); is not an XML character", at: start)
            }
            UTF8.encode(scalar) { text.append($0) }
            return
        }
        let name = try self.name()
        guard position < bytes.count, bytes[position] == .semicolon else {
            throw malformed("entity reference &\(shown(name)) without its ';'", at: start)
        }
        position += 1
        switch name {
        case "amp": text.append(.ampersand)
        case "lt": text.append(.lessThan)
        case "gt": text.append(.greaterThan)
        case "quot": text.append(.quotationMark)
        case "apos": text.append(.apostrophe)
        default: throw .invalidResponse("XML response with a document type declaration or entity references")
        }
    }

    private func digitValue(_ byte: UInt8, hexadecimal: Bool) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f") where hexadecimal: UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F") where hexadecimal: UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// XML 1.0's Char production.
    private func isXMLCharacter(_ value: UInt32) -> Bool {
        switch value {
        case 0x9, 0xA, 0xD, 0x20...0xD7FF, 0xE000...0xFFFD, 0x10000...0x10FFFF: true
        default: false
        }
    }

    // MARK: - Markup

    /// The XML declaration, only at the very start: its version, and an encoding, if named, that
    /// is UTF-8 (or ASCII, a subset), the only one S3 answers in.
    private mutating func declaration() throws(S3ClientError) {
        guard starts(with: "<?xml"), position + 5 < bytes.count, isWhitespace(bytes[position + 5]) else { return }
        position += 5
        var seen: [String] = []
        while true {
            let spaced = skipWhitespace()
            if starts(with: "?>") { break }
            guard spaced else { throw malformed("malformed XML declaration") }
            let name = try name()
            let value = try attributeValue()
            guard ["version", "encoding", "standalone"].contains(name), !seen.contains(name) else {
                throw malformed("malformed XML declaration")
            }
            seen.append(name)
            switch name {
            case "version":
                // XML 1.0's VersionNum, 1. and digits (libxml2 took "1." too).
                guard value.hasPrefix("1."), value.utf8.dropFirst(2).allSatisfy({ (0x30...0x39).contains($0) }) else {
                    throw malformed("unsupported XML version")
                }
            case "encoding":
                // XML's EncName (a letter, then letters, digits, '.', '_', '-'), compared as iconv,
                // which libxml2 asked, compares names: case and punctuation aside.
                let isEncodingName = value.utf8.first.map(isLetter) == true
                    && value.utf8.allSatisfy { isLetter($0) || (0x30...0x39).contains($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
                guard isEncodingName else { throw malformed("malformed XML declaration") }
                guard ["utf8", "usascii", "ascii"].contains(String(value.lowercased().filter { $0.isLetter || $0.isNumber })) else {
                    throw malformed("unsupported encoding \(shown(value)) (S3 answers in UTF-8)")
                }
            default:
                guard value == "yes" || value == "no" else { throw malformed("malformed XML declaration") }
            }
        }
        guard seen.first == "version" else { throw malformed("XML declaration without its version") }
        position += 2
    }

    /// Whitespace, the only text allowed before and after the root element.
    private mutating func whitespaceOutsideTheRoot(afterRoot: Bool) throws(S3ClientError) {
        guard skipWhitespace() else {
            throw malformed(afterRoot ? "extra content at the end of the document" : "start tag expected, '<' not found")
        }
    }

    private mutating func comment() throws(S3ClientError) {
        let start = position
        position += 4
        while !starts(with: "--") {
            guard position < bytes.count else { throw malformed("comment not terminated", at: start) }
            position += 1
        }
        position += 2
        try expect(.greaterThan, "double hyphen within comment")
    }

    /// A processing instruction, skipped; one named `xml` anywhere but at the start is a
    /// misplaced declaration.
    private mutating func processingInstruction() throws(S3ClientError) {
        let start = position
        position += 2
        let target = try name()
        guard target.lowercased() != "xml" else {
            throw malformed("XML declaration allowed only at the start of the document", at: start)
        }
        guard starts(with: "?>") || skipWhitespace() else { throw malformed("malformed processing instruction", at: start) }
        while !starts(with: "?>") {
            guard position < bytes.count else { throw malformed("processing instruction not terminated", at: start) }
            position += 1
        }
        position += 2
    }

    /// A start tag's attributes, checked and dropped (S3 sends only `xmlns`). True when the tag
    /// ends with `/>`.
    private mutating func attributesEndEmpty() throws(S3ClientError) -> Bool {
        var names: [String] = []
        while true {
            let spaced = skipWhitespace()
            if starts(with: "/>") {
                position += 2
                return true
            }
            if starts(with: ">") {
                position += 1
                return false
            }
            guard position < bytes.count else { throw malformed("premature end of data in a start tag") }
            guard spaced else { throw malformed("attributes construct error") }
            let name = try name()
            guard !names.contains(name) else { throw malformed("attribute \(shown(name)) redefined") }
            names.append(name)
            _ = try attributeValue()
        }
    }

    /// `= "value"` or `= 'value'` after an attribute's name: no `<` inside, references
    /// well-formed.
    private mutating func attributeValue() throws(S3ClientError) -> String {
        skipWhitespace()
        try expect(.equalsSign, "'=' expected after an attribute name")
        skipWhitespace()
        guard position < bytes.count, bytes[position] == .quotationMark || bytes[position] == .apostrophe else {
            throw malformed("attribute value must be quoted")
        }
        let quote = bytes[position]
        let start = position
        position += 1
        var value: [UInt8] = []
        while true {
            guard position < bytes.count else { throw malformed("attribute value not terminated", at: start) }
            switch bytes[position] {
            case quote:
                position += 1
                try checkTextLength(value)
                return String(decoding: value, as: UTF8.self)
            case .lessThan:
                throw malformed("'<' in an attribute value")
            case .ampersand:
                try reference(into: &value)
            case let byte:
                value.append(byte)
                position += 1
            }
        }
    }

    /// An XML name: a letter, `_`, `:` or any non-ASCII character, then those, digits, `-` and
    /// `.`; at most `XMLElement.maxNameBytes`.
    private mutating func name() throws(S3ClientError) -> String {
        let start = position
        func isNameByte(_ byte: UInt8, first: Bool) -> Bool {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"),
                UInt8(ascii: ":"), 0x80...:
                true
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."): !first
            default: false
            }
        }
        while position < bytes.count, isNameByte(bytes[position], first: position == start) {
            position += 1
        }
        guard position > start else {
            throw malformed(position < bytes.count ? "name expected" : "premature end of data where a name was expected")
        }
        guard position - start <= XMLElement.maxNameBytes else {
            throw .invalidResponse("XML response with a name longer than \(XMLElement.maxNameBytes) bytes")
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    // MARK: - Helpers

    private func starts(with prefix: some Sequence<UInt8>) -> Bool {
        var offset = position
        for byte in prefix {
            guard offset < bytes.count, bytes[offset] == byte else { return false }
            offset += 1
        }
        return true
    }

    private func starts(with prefix: String) -> Bool {
        starts(with: prefix.utf8)
    }

    private func isLetter(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }

    private func isWhitespace(_ byte: UInt8) -> Bool {
        byte == .space || byte == .tab || byte == .lineFeed || byte == .carriageReturn
    }

    /// Skips whitespace; true when there was some.
    @discardableResult
    private mutating func skipWhitespace() -> Bool {
        let start = position
        while position < bytes.count, isWhitespace(bytes[position]) { position += 1 }
        return position > start
    }

    private mutating func expect(_ byte: UInt8, _ reason: String) throws(S3ClientError) {
        guard position < bytes.count, bytes[position] == byte else { throw malformed(reason) }
        position += 1
    }

    /// A name from the document as an error shows it: quoted, and cut short (the server's bytes
    /// must not flood a log line).
    private func shown(_ name: String) -> String {
        name.utf8.count <= 64 ? "'\(name)'" : "'\(name.prefix(64))…'"
    }

    private func line(at offset: Int) -> Int {
        1 + bytes[..<min(offset, bytes.count)].lazy.filter { $0 == .lineFeed }.count
    }

    private func malformed(_ reason: String, at offset: Int? = nil) -> S3ClientError {
        .invalidResponse("malformed XML response: \(reason) (line \(line(at: offset ?? position)))")
    }
}

extension UInt8 {
    fileprivate static let tab = UInt8(ascii: "\t")
    fileprivate static let lineFeed = UInt8(ascii: "\n")
    fileprivate static let carriageReturn = UInt8(ascii: "\r")
    fileprivate static let space = UInt8(ascii: " ")
    fileprivate static let quotationMark = UInt8(ascii: "\"")
    fileprivate static let numberSign = UInt8(ascii: "#")
    fileprivate static let ampersand = UInt8(ascii: "&")
    fileprivate static let apostrophe = UInt8(ascii: "'")
    fileprivate static let semicolon = UInt8(ascii: ";")
    fileprivate static let lessThan = UInt8(ascii: "<")
    fileprivate static let equalsSign = UInt8(ascii: "=")
    fileprivate static let greaterThan = UInt8(ascii: ">")
    fileprivate static let rightBracket = UInt8(ascii: "]")
}
