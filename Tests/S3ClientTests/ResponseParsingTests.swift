import Foundation
import Testing

@testable import S3Client

/// The S3 response pieces parsed without a server: XML bodies (libxml2's reader) and HTTP dates.
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

    @Test func httpDates() {
        #expect(HTTPDate.parseRFC1123("Wed, 21 Oct 2015 07:28:00 GMT") == Date(timeIntervalSince1970: 1_445_412_480))
        #expect(HTTPDate.parseRFC1123("yesterday") == nil)
        #expect(HTTPDate.parseISO8601("2015-10-21T07:28:00.000Z") == Date(timeIntervalSince1970: 1_445_412_480))
    }
}
