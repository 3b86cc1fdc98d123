import Foundation
import S3Client
import SystemSupport
import Testing

/// Runs every case of the AWS SigV4 test suite (from awslabs/aws-c-auth) in ../shared, in both
/// the header and the query (presigned) variant, the way aws-c-auth's own runner reads them:
/// the path in request.txt is the path as sent (so the generic rules encode it a second time),
/// `normalize` switches path normalisation, `sign_body` adds `x-amz-content-sha256`, and a
/// session token is signed (a header, or `X-Amz-Security-Token` in the query).
struct SigV4TestSuiteTests {
    private static let suiteDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Tests/S3ClientTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // the package root
        .deletingLastPathComponent()
        .appendingPathComponent("shared/sigv4-test-suite/v4")

    @Test func everyCaseInBothVariants() throws {
        let caseNames = try FileManager.default
            .contentsOfDirectory(atPath: Self.suiteDirectory.path)
            .filter { FileManager.default.fileExists(atPath: caseDirectory($0).appendingPathComponent("context.json").path) }
            .sorted()
        #expect(caseNames.count >= 30, "cases found in \(Self.suiteDirectory.path)")
        for name in caseNames {
            try check(caseNamed: name)
        }
    }

    private func check(caseNamed name: String) throws {
        let directory = caseDirectory(name)
        func expected(_ file: String) throws -> String {
            try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
        }
        func compare(_ variant: String, _ what: String, expected: String, actual: String) {
            if expected != actual {
                Issue.record("\(name) [\(variant)] \(what) differs (- expected, + actual):\n\(lineDiff(expected, actual))")
            }
        }

        let context = try JSONDecoder().decode(
            SuiteContext.self,
            from: Data(contentsOf: directory.appendingPathComponent("context.json"))
        )
        guard context.omitSessionToken != true else {
            Issue.record("\(name): omit_session_token (token added after signing) is not supported")
            return
        }
        let request = try SuiteRequest(parsing: expected("request.txt"))
        let date = try #require(ISO8601DateFormatter().date(from: context.timestamp), "\(name): timestamp")
        let signer = SigV4Signer(
            credentials: AWSCredentials(
                accessKeyID: context.credentials.accessKeyID,
                secretAccessKey: context.credentials.secretAccessKey,
                sessionToken: context.credentials.token
            ),
            region: context.region,
            service: context.service,
            rules: .init(doubleEncodesPath: true, normalizesPath: context.normalize, sendsContentSHA256: context.signBody)
        )
        let payload = SigV4Payload.hashing(request.body)

        let headerSigned = signer.signHeaders(request.sigV4Request, payload: payload, date: date)
        compare("header", "canonical request", expected: try expected("header-canonical-request.txt"),
                actual: headerSigned.calculation.canonicalRequest)
        compare("header", "string to sign", expected: try expected("header-string-to-sign.txt"),
                actual: headerSigned.calculation.stringToSign)
        compare("header", "signature", expected: try expected("header-signature.txt"),
                actual: headerSigned.calculation.signature)
        let signedRequest = try SuiteRequest(parsing: expected("header-signed-request.txt"))
        compare("header", "added headers", expected: headerLines(signedRequest.signerHeaders),
                actual: headerLines(headerSigned.headersToAdd))

        let querySigned = signer.presign(
            request.sigV4Request, expiresIn: context.expirationInSeconds, payload: payload, date: date
        )
        compare("query", "canonical request", expected: try expected("query-canonical-request.txt"),
                actual: querySigned.calculation.canonicalRequest)
        compare("query", "string to sign", expected: try expected("query-string-to-sign.txt"),
                actual: querySigned.calculation.stringToSign)
        compare("query", "signature", expected: try expected("query-signature.txt"),
                actual: querySigned.calculation.signature)
        // The sample lists the parameters in another order; only the set must match.
        let presignedRequest = try SuiteRequest(parsing: expected("query-signed-request.txt"))
        compare("query", "query parameters", expected: queryLines(presignedRequest.rawQuery),
                actual: queryLines(querySigned.queryString))
    }

    private func caseDirectory(_ name: String) -> URL {
        Self.suiteDirectory.appendingPathComponent(name)
    }

    private func headerLines(_ headers: [(name: String, value: String)]) -> String {
        headers.map { "\($0.name.lowercased()): \($0.value)" }.sorted().joined(separator: "\n")
    }

    private func queryLines(_ query: String) -> String {
        query.split(separator: "&").sorted().joined(separator: "\n")
    }
}

private struct SuiteContext: Decodable {
    struct Credentials: Decodable {
        let accessKeyID: String
        let secretAccessKey: String
        let token: String?

        enum CodingKeys: String, CodingKey {
            case accessKeyID = "access_key_id"
            case secretAccessKey = "secret_access_key"
            case token
        }
    }

    let credentials: Credentials
    let region: String
    let service: String
    let timestamp: String
    let normalize: Bool
    let signBody: Bool
    let omitSessionToken: Bool?
    let expirationInSeconds: Int

    enum CodingKeys: String, CodingKey {
        case credentials, region, service, timestamp, normalize
        case signBody = "sign_body"
        case omitSessionToken = "omit_session_token"
        case expirationInSeconds = "expiration_in_seconds"
    }
}

/// A raw HTTP/1.1 request from the suite: request line, "Name:value" headers, blank line, body.
private struct SuiteRequest {
    let method: String
    let target: String
    let headers: [(name: String, value: String)]
    let body: [UInt8]

    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    init(parsing text: String) throws {
        let lines = text.replacingOccurrences(of: "\r", with: "").split(separator: "\n", omittingEmptySubsequences: false)
        // The target may contain spaces ("GET /example space/ HTTP/1.1").
        let requestLine = lines[0]
        guard let methodEnd = requestLine.firstIndex(of: " "), requestLine.hasSuffix(" HTTP/1.1") else {
            throw Malformed(description: "request line \(requestLine)")
        }
        method = String(requestLine[..<methodEnd])
        target = String(requestLine[requestLine.index(after: methodEnd)...].dropLast(" HTTP/1.1".count))

        var headers: [(name: String, value: String)] = []
        var index = 1
        while index < lines.count, !lines[index].isEmpty {
            guard let colon = lines[index].firstIndex(of: ":") else {
                throw Malformed(description: "header line \(lines[index])")
            }
            headers.append((name: String(lines[index][..<colon]), value: String(lines[index][lines[index].index(after: colon)...])))
            index += 1
        }
        self.headers = headers
        body = index + 1 < lines.count ? Array(lines[(index + 1)...].joined(separator: "\n").utf8) : []
    }

    var rawQuery: String {
        target.firstIndex(of: "?").map { String(target[target.index(after: $0)...]) } ?? ""
    }

    var sigV4Request: SigV4Request {
        let path = target.firstIndex(of: "?").map { String(target[..<$0]) } ?? target
        let query = rawQuery.split(separator: "&").map { parameter in
            let parts = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (name: percentDecoded(parts[0]), value: parts.count > 1 ? percentDecoded(parts[1]) : "")
        }
        return SigV4Request(
            method: method,
            host: headers.first { $0.name.lowercased() == "host" }?.value ?? "",
            encodedPath: path,
            query: query,
            headers: headers.filter { $0.name.lowercased() != "host" }
        )
    }

    /// The headers a signed sample has that the unsigned request does not.
    var signerHeaders: [(name: String, value: String)] {
        let names: Set = ["x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"]
        return headers.filter { names.contains($0.name.lowercased()) }
    }

    private func percentDecoded(_ text: Substring) -> String {
        String(text).removingPercentEncoding ?? String(text)
    }
}

/// Line by line: equal lines once, differing lines as "- expected" then "+ actual".
private func lineDiff(_ expected: String, _ actual: String) -> String {
    let expectedLines = expected.split(separator: "\n", omittingEmptySubsequences: false)
    let actualLines = actual.split(separator: "\n", omittingEmptySubsequences: false)
    var output: [String] = []
    for index in 0..<max(expectedLines.count, actualLines.count) {
        let expectedLine = index < expectedLines.count ? expectedLines[index] : nil
        let actualLine = index < actualLines.count ? actualLines[index] : nil
        if expectedLine == actualLine, let line = expectedLine {
            output.append("  \(line)")
            continue
        }
        if let expectedLine { output.append("- \(expectedLine)") }
        if let actualLine { output.append("+ \(actualLine)") }
    }
    return output.joined(separator: "\n")
}
