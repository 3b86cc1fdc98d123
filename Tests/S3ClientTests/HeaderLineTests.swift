import Foundation
@testable import S3Client
import Testing

/// The response head as curl hands it over, a line at a time with its line ending: the status
/// of the last status line, each header's name and value without the whitespace around them.
@Suite("curl header lines")
struct HeaderLineTests {
    private func transfer(_ lines: [String]) throws -> CurlTransfer {
        let request = CurlRequest(
            method: "GET", url: "http://127.0.0.1:1/k", headers: [], body: .empty, destination: .memory, requestedRange: nil,
            digestsWholeObjectBody: false, timeouts: S3Configuration.Timeouts(), tls: S3Configuration.TLS())
        let transfer = CurlTransfer(handle: try CurlEasyHandle(), request: request)
        for line in lines { Array(line.utf8).withUnsafeBytes { transfer.headerLine($0) } }
        return transfer
    }

    @Test func readsTheLastStatusLineAndTrimmedHeaders() throws {
        let parsed = try transfer([
            "HTTP/1.1 100 Continue\r\n", "\r\n",
            "HTTP/1.1 200 OK\r\n", "ETag: \"abc\"\r\n", "x-empty:\r\n", "x-spaces: \t a  b \t\r\n", "no colon here\r\n",
            "Content-Length:12\n", "\r\n",
        ])
        #expect(parsed.status == 200)
        #expect(parsed.headersEnded)
        #expect(parsed.headers.map(\.name) == ["ETag", "x-empty", "x-spaces", "Content-Length"])
        #expect(parsed.headers.map(\.value) == ["\"abc\"", "", "a  b", "12"])
    }

    @Test func aStatusLineWithoutACodeIsStatusZero() throws {
        #expect(try transfer(["HTTP/1.1\r\n"]).status == 0)
        #expect(try transfer(["HTTP/2 204\r\n"]).status == 204)
    }
}
