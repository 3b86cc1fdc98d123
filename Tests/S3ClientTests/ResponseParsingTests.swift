import Foundation
import Testing

@testable import S3Client

/// The S3 response pieces parsed without a server: XML bodies (`XMLReader`) and HTTP dates.
@Suite("S3 response parsing")
struct ResponseParsingTests {
    @Test func listingElementsTextEntitiesCDATAAndEmptyElements() throws {
        let body = """
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Name>bucket</Name><Prefix/><KeyCount>2</KeyCount>
              <!-- a comment -->
              <Contents><Key>a&amp;b &lt;c&gt;</Key><Size>5</Size></Contents>
              <Contents><Key><![CDATA[x<y]]></Key><Size>0</Size></Contents>
            </ListBucketResult>
            """
        let root = try XMLElement.parse(Array(body.utf8))
        #expect(root.name == "ListBucketResult")
        #expect(root.text(of: "Name") == "bucket")
        #expect(root.text(of: "Prefix") == "")
        #expect(root.children("Contents").map { $0.text(of: "Key") } == ["a&b <c>", "x<y"])
        #expect(root.children("Contents").map { $0.text(of: "Size") } == ["5", "0"])
    }

    @Test(arguments: ["not xml at all", "<a><b></a>", "<a>", "", "<a/><b/>"])
    func malformedDocumentsAreInvalidResponses(_ body: String) {
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(body.utf8)) }
    }

    /// S3 sends no DTD: a document with one, and so any entity of its own, is refused outright.
    @Test(arguments: [
        "<!DOCTYPE a [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><a>&e;</a>",
        "<!DOCTYPE a [<!ENTITY e \"x\"><!ENTITY f \"&e;&e;&e;&e;&e;&e;&e;&e;\">]><a>&f;</a>",
        "<!DOCTYPE a SYSTEM \"http://127.0.0.1:1/evil.dtd\"><a/>",
    ])
    func documentTypeDeclarationsAreRefused(_ body: String) {
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(body.utf8)) }
    }

    @Test func nestingAndSizeLimitsStopTheParse() {
        let deep = String(repeating: "<a>", count: XMLElement.maxDepth + 1) + String(repeating: "</a>", count: XMLElement.maxDepth + 1)
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(deep.utf8)) }
        #expect(throws: S3ClientError.self) { try XMLElement.parse([UInt8](repeating: 0x20, count: XMLElement.maxBytes + 1)) }
    }

    // MARK: - The reader's edge cases (XMLReader)

    @Test func whitespaceAndLineEndsAreTextAsLibxml2GaveThem() throws {
        let root = try XMLElement.parse(Array("<a>  <b> x </b> y\r\n z\r w <c/></a>".utf8))
        #expect(root.text == "   y\n z\n w ")
        #expect(root.text(of: "b") == " x ")
        #expect(root.text(of: "c") == "")
    }

    @Test func characterReferencesAndPredefinedEntities() throws {
        let root = try XMLElement.parse(Array("<a>&#65;&#x42;&#x1F600;&#0065;&lt;&gt;&quot;&apos;&amp;</a>".utf8))
        #expect(root.text == "AB\u{1F600}A<>\"'&")
    }

    @Test(arguments: [
        "<a>&#0;</a>", "<a>&#xD800;</a>", "<a>&#x110000;</a>", "<a>&#xFFFE;</a>", "<a>&#99999999999999999999;</a>",
        "<a>&#x;</a>", "<a>&#;</a>", "<a>&#X41;</a>", "<a>&#x41</a>", "<a>&amp</a>", "<a>&amp ;</a>", "<a>&AMP;</a>", "<a>&foo;</a>",
        "<a b=\"&foo;\"/>",
    ])
    func badReferencesAreRefused(_ body: String) {
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(body.utf8)) }
    }

    @Test func cdataIsTakenAsItIs() throws {
        let root = try XMLElement.parse(Array("<a>x<![CDATA[ <y> &amp; ]] ]]]]><![CDATA[>\r\n]]></a>".utf8))
        #expect(root.text == "x <y> &amp; ]] ]]>\r\n")
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array("<a><![CDATA[x]]</a>".utf8)) }
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array("<![CDATA[x]]><a/>".utf8)) }
    }

    @Test func declarationCommentsProcessingInstructionsAndAttributes() throws {
        let body = """
            \u{FEFF}<?xml version='1.0' encoding='utf-8' standalone="yes"?>
            <!-- c --><?pi data?>
            <a xmlns="http://s3.amazonaws.com/doc/2006-03-01/" b = '"' c="&#60;&amp;"><!----><?p?>t</a >
            <!-- after -->
            """
        let root = try XMLElement.parse(Array(body.utf8))
        #expect(root == XMLElement(name: "a", text: "t", children: []))
    }

    @Test(arguments: [
        "<a b=\"1\" b=\"2\"/>", "<a b=\"<\"/>", "<a b=\"1\"c=\"2\"/>", "<a b=1/>", "<a b/>",
        "<!-- a -- b --><a/>", "<!---><a/>", "<a/><!-- c --->",
        "<a><?xml version=\"1.0\"?></a>", " <?xml version=\"1.0\"?><a/>", "<?xml version=\"2.0\"?><a/>",
        "<?xml encoding=\"UTF-8\" version=\"1.0\"?><a/>", "<?xml version=\"1.0\" standalone=\"maybe\"?><a/>",
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>",
        "<a>]]></a>", "<a><!ELEMENT a></a>", "<1a/>", "<a></a b>", "</a>", "<a/>&amp;", "text<a/>", "<a/>text",
        "<a>\u{1}</a>", "<a b=\"\u{7}\"/>",
    ])
    func malformedMarkupIsRefused(_ body: String) {
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(body.utf8)) }
    }

    @Test(arguments: [[0x3C, 0x61, 0x3E, 0xFF, 0x3C, 0x2F, 0x61, 0x3E], [0x3C, 0x61, 0x3E, 0xC0, 0x80, 0x3C, 0x2F, 0x61, 0x3E],
                      [0x3C, 0x61, 0x3E, 0xED, 0xA0, 0x80, 0x3C, 0x2F, 0x61, 0x3E], [0x3C, 0x61, 0x3E, 0xEF, 0xBF, 0xBF, 0x3C, 0x2F, 0x61, 0x3E],
                      [0x3C, 0x61, 0x3E, 0xE2, 0x82, 0x3C, 0x2F, 0x61, 0x3E]] as [[UInt8]])
    func bytesThatAreNotUTF8CharactersAreRefused(_ body: [UInt8]) {
        #expect(throws: S3ClientError.self) { try XMLElement.parse(body) }
    }

    @Test func nonASCIINamesAndTextAreKept() throws {
        let root = try XMLElement.parse(Array("<é:ü><Key>ключ 🔑</Key></é:ü>".utf8))
        #expect(root.name == "é:ü")
        #expect(root.text(of: "Key") == "ключ 🔑")
    }

    /// Every cut of a complete document before its root's end is refused: a truncated answer is
    /// never taken for a shorter one.
    @Test func everyTruncationIsRefused() throws {
        let body = Array("""
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult><Contents><Key>a&amp;b</Key><Size>5</Size></Contents><Prefix/><!-- c --><![CDATA[x]]></ListBucketResult>
            """.utf8)
        _ = try XMLElement.parse(body)
        for length in 0..<body.count {
            #expect(throws: S3ClientError.self, "cut at \(length)") { try XMLElement.parse(Array(body[..<length])) }
        }
    }

    @Test func depthElementCountNameAndTextLimits() throws {
        let deepest = String(repeating: "<a>", count: XMLElement.maxDepth) + String(repeating: "</a>", count: XMLElement.maxDepth)
        _ = try XMLElement.parse(Array(deepest.utf8))

        let most = "<r>" + String(repeating: "<a/>", count: XMLElement.maxElements - 1) + "</r>"
        #expect(try XMLElement.parse(Array(most.utf8)).children.count == XMLElement.maxElements - 1)
        let tooMany = "<r>" + String(repeating: "<a/>", count: XMLElement.maxElements) + "</r>"
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(tooMany.utf8)) }

        let longName = String(repeating: "n", count: XMLElement.maxNameBytes + 1)
        let nameError = #expect(throws: S3ClientError.self) { try XMLElement.parse(Array("<\(longName)/>".utf8)) }
        #expect(String(describing: nameError).utf8.count < 200, "the error does not repeat the name")

        let longest = "<a>" + String(repeating: "x", count: XMLElement.maxTextBytes) + "</a>"
        #expect(try XMLElement.parse(Array(longest.utf8)).text.utf8.count == XMLElement.maxTextBytes)
        let tooLong = "<a>" + String(repeating: "x", count: XMLElement.maxTextBytes - 2) + "<![CDATA[xyz]]></a>"
        #expect(throws: S3ClientError.self) { try XMLElement.parse(Array(tooLong.utf8)) }
    }

    @Test func errorsNameTheLineAndCutLongNamesShort() {
        let name = String(repeating: "k", count: 1000)
        let error = #expect(throws: S3ClientError.self) {
            try XMLElement.parse(Array("<\(name)>\n\n<b></c></\(name)>".utf8))
        }
        guard case .invalidResponse(let reason) = error else {
            Issue.record("expected an invalid response, got \(String(describing: error))")
            return
        }
        #expect(reason.hasPrefix("malformed XML response: opening and ending tag mismatch: 'b' line 3 and 'c'"))
        #expect(reason.hasSuffix("(line 3)"))
        let long = #expect(throws: S3ClientError.self) { try XMLElement.parse(Array("<\(name)>".utf8)) }
        #expect(String(describing: long).utf8.count < 200)
    }

    @Test func httpDates() {
        #expect(HTTPDate.parseRFC1123("Wed, 21 Oct 2015 07:28:00 GMT") == Date(timeIntervalSince1970: 1_445_412_480))
        #expect(HTTPDate.parseRFC1123("yesterday") == nil)
        #expect(HTTPDate.parseISO8601("2015-10-21T07:28:00.000Z") == Date(timeIntervalSince1970: 1_445_412_480))
    }
}
