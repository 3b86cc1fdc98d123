import FoundationEssentials
import Glibc
import Synchronization
import SystemSupport

/// AWS Signature Version 4 (HMAC-SHA256), with the date always passed in.
///
/// Each stage has the name the AWS documentation gives it (canonical request, string to sign,
/// signing key, signature) and can be called on its own; `signHeaders` and `presign` chain them.
public struct SigV4Signer: Sendable {
    /// Where services disagree on the canonical request.
    public struct Rules: Sendable, Equatable {
        /// Every service but S3 URI-encodes the already-encoded path a second time.
        public var doubleEncodesPath: Bool
        /// Every service but S3 removes "." and ".." segments and empty segments from the path;
        /// S3 keys may contain them, so S3 signs the path exactly as sent.
        public var normalizesPath: Bool
        /// S3 requires the hashed payload in an `x-amz-content-sha256` header (signed too)
        /// when signing with the `Authorization` header.
        public var sendsContentSHA256: Bool

        public init(doubleEncodesPath: Bool, normalizesPath: Bool, sendsContentSHA256: Bool) {
            self.doubleEncodesPath = doubleEncodesPath
            self.normalizesPath = normalizesPath
            self.sendsContentSHA256 = sendsContentSHA256
        }

        public static let s3 = Rules(doubleEncodesPath: false, normalizesPath: false, sendsContentSHA256: true)
        public static let generic = Rules(doubleEncodesPath: true, normalizesPath: true, sendsContentSHA256: false)
    }

    public static let algorithm = "AWS4-HMAC-SHA256"
    /// AWS refuses presigned URLs valid for longer than seven days.
    public static let presignedExpiryRange = 1...604_800

    public let credentials: AWSCredentials
    public let region: String
    public let service: String
    public let rules: Rules
    /// The signing key of the last day signed for, shared by copies of this signer (whose
    /// credentials, region and service cannot change): it changes once a day, and deriving it
    /// is four HMACs, about 100,000 instructions a request (callgrind).
    private let signingKeys = SigningKeyCache()

    public init(credentials: AWSCredentials, region: String, service: String = "s3", rules: Rules = .s3) {
        self.credentials = credentials
        self.region = region
        self.service = service
        self.rules = rules
    }

    // MARK: - Signing a request

    /// Signs with the `Authorization` header and returns the headers to add to the request.
    public func signHeaders(_ request: SigV4Request, payload: SigV4Payload, date: Date) -> HeaderSignature {
        Self.requireNoSignerHeaders(request)
        var headersToAdd = [(name: "x-amz-date", value: SigV4Timestamp(date).dateTime)]
        if rules.sendsContentSHA256 {
            headersToAdd.append((name: "x-amz-content-sha256", value: payload.hashedPayload))
        }
        if let token = credentials.sessionToken {
            headersToAdd.append((name: "x-amz-security-token", value: token))
        }
        let headers = CanonicalHeaders([(name: "host", value: request.host)] + request.headers + headersToAdd)
        let calculation = calculate(
            request,
            canonicalQueryString: Self.canonicalQueryString(request.query),
            headers: headers,
            payload: payload,
            date: date
        )
        let authorization = "\(Self.algorithm) Credential=\(credentials.accessKeyID)/\(credentialScope(date: date)), "
            + "SignedHeaders=\(headers.signedHeaders), Signature=\(calculation.signature)"
        headersToAdd.append((name: "authorization", value: authorization))
        return HeaderSignature(headersToAdd: headersToAdd, calculation: calculation)
    }

    /// Signs with query parameters (a presigned URL valid for `expiresIn` seconds from `date`).
    /// Whoever uses the URL must send the request's headers unchanged; S3 expects `.unsigned`.
    public func presign(
        _ request: SigV4Request,
        expiresIn seconds: Int,
        payload: SigV4Payload = .unsigned,
        date: Date
    ) -> QuerySignature {
        Self.requireNoSignerHeaders(request)
        precondition(
            Self.presignedExpiryRange.contains(seconds),
            "a presigned URL must expire within \(Self.presignedExpiryRange) seconds, not \(seconds)"
        )
        let headers = CanonicalHeaders([(name: "host", value: request.host)] + request.headers)
        var query = request.query + [
            (name: "X-Amz-Algorithm", value: Self.algorithm),
            (name: "X-Amz-Credential", value: "\(credentials.accessKeyID)/\(credentialScope(date: date))"),
            (name: "X-Amz-Date", value: SigV4Timestamp(date).dateTime),
            (name: "X-Amz-Expires", value: String(seconds)),
            (name: "X-Amz-SignedHeaders", value: headers.signedHeaders),
        ]
        if let token = credentials.sessionToken {
            query.append((name: "X-Amz-Security-Token", value: token))
        }
        let canonicalQueryString = Self.canonicalQueryString(query)
        let calculation = calculate(
            request,
            canonicalQueryString: canonicalQueryString,
            headers: headers,
            payload: payload,
            date: date
        )
        let separator = canonicalQueryString.isEmpty ? "" : "&"
        return QuerySignature(
            queryString: "\(canonicalQueryString)\(separator)X-Amz-Signature=\(calculation.signature)",
            calculation: calculation
        )
    }

    private func calculate(
        _ request: SigV4Request,
        canonicalQueryString: String,
        headers: CanonicalHeaders,
        payload: SigV4Payload,
        date: Date
    ) -> SignatureCalculation {
        let canonicalRequest = Self.canonicalRequest(
            method: request.method,
            canonicalURI: canonicalURI(encodedPath: request.encodedPath),
            canonicalQueryString: canonicalQueryString,
            headers: headers,
            hashedPayload: payload.hashedPayload
        )
        let stringToSign = stringToSign(canonicalRequest: canonicalRequest, date: date)
        return SignatureCalculation(
            canonicalRequest: canonicalRequest,
            stringToSign: stringToSign,
            signature: signature(stringToSign: stringToSign, date: date)
        )
    }

    private static let headersTheSignerSets: Set = [
        "host", "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token",
    ]

    private static func requireNoSignerHeaders(_ request: SigV4Request) {
        for header in request.headers {
            precondition(
                !headersTheSignerSets.contains(header.name.lowercased()),
                "the signer sets the \(header.name) header itself; pass the host as SigV4Request.host"
            )
        }
    }

    // MARK: - Stages, as named in the AWS documentation

    /// CanonicalRequest = method, canonical URI, canonical query string, canonical headers,
    /// signed headers and hashed payload, one per line.
    public static func canonicalRequest(
        method: String,
        canonicalURI: String,
        canonicalQueryString: String,
        headers: CanonicalHeaders,
        hashedPayload: String
    ) -> String {
        [method, canonicalURI, canonicalQueryString, headers.canonicalHeaders, headers.signedHeaders, hashedPayload]
            .joined(separator: "\n")
    }

    /// The path as signed, from the path as sent. Under S3 rules the two are the same.
    public func canonicalURI(encodedPath: String) -> String {
        var path = encodedPath.isEmpty ? "/" : encodedPath
        if rules.normalizesPath {
            path = Self.removingDotAndEmptySegments(path)
        }
        if rules.doubleEncodesPath {
            path = Self.uriEncode(path, encodeSlash: false)
        }
        return path
    }

    /// Parameters as "name=value" with both sides URI-encoded ('/' too), sorted by encoded
    /// name and then encoded value, joined by "&".
    public static func canonicalQueryString(_ items: [(name: String, value: String)]) -> String {
        items
            .map { (name: uriEncode($0.name, encodeSlash: true), value: uriEncode($0.value, encodeSlash: true)) }
            .sorted { ($0.name, $0.value) < ($1.name, $1.value) }
            .map { "\($0.name)=\($0.value)" }
            .joined(separator: "&")
    }

    /// Percent-encodes every UTF-8 byte except the unreserved `A-Z a-z 0-9 - . _ ~` (and '/'
    /// unless `encodeSlash`), with uppercase hex digits. A space becomes "%20", never "+".
    public static func uriEncode(_ string: String, encodeSlash: Bool) -> String {
        var encoded: [UInt8] = []
        encoded.reserveCapacity(string.utf8.count)
        for byte in string.utf8 {
            if isUnreserved(byte) || (byte == UInt8(ascii: "/") && !encodeSlash) {
                encoded.append(byte)
            } else {
                encoded.append(UInt8(ascii: "%"))
                Hex.append(CollectionOfOne(byte), to: &encoded, uppercase: true)
            }
        }
        return String(decoding: encoded, as: UTF8.self)
    }

    /// "yyyymmdd/region/service/aws4_request".
    public func credentialScope(date: Date) -> String {
        "\(SigV4Timestamp(date).day)/\(region)/\(service)/aws4_request"
    }

    /// StringToSign = algorithm, request date-time, credential scope and the hex SHA-256 of the
    /// canonical request, one per line.
    public func stringToSign(canonicalRequest: String, date: Date) -> String {
        [
            Self.algorithm,
            SigV4Timestamp(date).dateTime,
            credentialScope(date: date),
            SHA256.hash(canonicalRequest.utf8).lowercaseHex,
        ].joined(separator: "\n")
    }

    /// The derived signing key: HMAC chain of "AWS4" + secret over the day, region, service
    /// and "aws4_request".
    public func signingKey(date: Date) -> [UInt8] {
        let dateKey = HMACSHA256.authenticationCode(
            key: Array("AWS4\(credentials.secretAccessKey)".utf8),
            message: SigV4Timestamp(date).day.utf8
        )
        return [region, service, "aws4_request"].reduce(dateKey) { key, part in
            HMACSHA256.authenticationCode(key: key, message: part.utf8)
        }
    }

    /// The hex HMAC-SHA256 of the string to sign under the signing key.
    public func signature(stringToSign: String, date: Date) -> String {
        let key = signingKeys.key(day: SigV4Timestamp(date).day) { signingKey(date: date) }
        return HMACSHA256.authenticationCode(key: key, message: stringToSign.utf8).lowercaseHex
    }

    // MARK: - Helpers

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            true
        default:
            false
        }
    }

    /// RFC 3986 dot-segment removal, plus dropping empty segments ("//"), keeping a trailing
    /// slash when the last segment names a directory.
    private static func removingDotAndEmptySegments(_ path: String) -> String {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        var kept: [Substring] = []
        for segment in segments {
            switch segment {
            case "", ".": continue
            case "..": _ = kept.popLast()
            default: kept.append(segment)
            }
        }
        let endsInDirectory = ["", ".", ".."].contains(segments.last ?? "")
        let trailingSlash = endsInDirectory && !kept.isEmpty ? "/" : ""
        return "/" + kept.joined(separator: "/") + trailingSlash
    }
}

/// One day's signing key, kept for the next request of the same day.
private final class SigningKeyCache: Sendable {
    private let last = Mutex<(day: Substring, key: [UInt8])?>(nil)

    func key(day: Substring, derive: () -> [UInt8]) -> [UInt8] {
        if let last = last.withLock({ $0 }), last.day == day { return last.key }
        let key = derive()
        last.withLock { $0 = (day, key) }
        return key
    }
}

/// The two forms of the signing time: "20150830T123600Z" and its day "20150830", always UTC.
struct SigV4Timestamp {
    let dateTime: String

    var day: Substring { dateTime.prefix(8) }

    init(_ date: Date) {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var utc = tm()
        gmtime_r(&seconds, &utc)
        var text: [UInt8] = []
        text.reserveCapacity(16)
        // At least `width` digits, zero-padded (a year before 1 is written as 0000: no clock says it).
        func digits(_ value: Int32, _ width: Int32) {
            let value = max(value, 0)
            var divisor: Int32 = 1
            var places: Int32 = 1
            while places < width || value / divisor >= 10 {
                divisor *= 10
                places += 1
            }
            while divisor > 0 {
                text.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
                divisor /= 10
            }
        }
        digits(utc.tm_year + 1900, 4)
        digits(utc.tm_mon + 1, 2)
        digits(utc.tm_mday, 2)
        text.append(UInt8(ascii: "T"))
        digits(utc.tm_hour, 2)
        digits(utc.tm_min, 2)
        digits(utc.tm_sec, 2)
        text.append(UInt8(ascii: "Z"))
        dateTime = String(decoding: text, as: UTF8.self)
    }
}
