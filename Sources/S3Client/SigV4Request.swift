import SystemSupport

/// One HTTP request as SigV4 sees it.
///
/// The path and query are kept in the form that goes on the wire, so what the client sends is
/// byte for byte what was signed: send `encodedPath` and, after "?", `encodedQuery` (or a
/// presigned query string).
public struct SigV4Request: Sendable {
    public var method: String
    /// As in the `Host` header: with the port when it is not the scheme's default.
    public var host: String
    /// The path as sent, percent-encoded ("/bucket/some%20key").
    public var encodedPath: String
    /// Unencoded query parameters, in any order; a parameter without a value has value "".
    public var query: [(name: String, value: String)]
    /// Unencoded headers to sign besides `host`; repeated names are allowed and signed in order.
    /// The signer adds `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` and
    /// `authorization` itself, so none of these nor `host` may appear here.
    public var headers: [(name: String, value: String)]

    /// A request for an unencoded path such as "/bucket/some key": each byte outside the
    /// unreserved set is percent-encoded, '/' is kept.
    public init(
        method: String,
        host: String,
        path: String,
        query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)] = []
    ) {
        self.init(
            method: method,
            host: host,
            encodedPath: SigV4Signer.uriEncode(path, encodeSlash: false),
            query: query,
            headers: headers
        )
    }

    /// A request whose path is already in its on-the-wire form.
    public init(
        method: String,
        host: String,
        encodedPath: String,
        query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)] = []
    ) {
        self.method = method
        self.host = host
        self.encodedPath = encodedPath
        self.query = query
        self.headers = headers
    }

    /// The query string to send after "?" (empty for none). It is the canonical form, sorted
    /// and encoded, so servers that re-derive it from the wire get the same bytes.
    public var encodedQuery: String {
        SigV4Signer.canonicalQueryString(query)
    }
}

/// What the canonical request says about the body.
public enum SigV4Payload: Sendable, Equatable {
    /// `UNSIGNED-PAYLOAD`: the body is not covered by the signature (presigned URLs, or a body
    /// streamed before its hash is known; integrity then rests on `Content-MD5` or a checksum).
    case unsigned
    /// The lowercase hexadecimal SHA-256 of the body.
    case sha256(hex: String)

    /// The payload of a request without a body.
    public static var empty: SigV4Payload {
        .sha256(hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    public static func hashing(_ body: some Collection<UInt8>) -> SigV4Payload {
        .sha256(hex: SHA256.hash(body).lowercaseHex)
    }

    /// The last line of the canonical request, and the value of `x-amz-content-sha256`.
    public var hashedPayload: String {
        switch self {
        case .unsigned: "UNSIGNED-PAYLOAD"
        case .sha256(let hex): hex
        }
    }
}

/// The headers of a request in canonical form: names lowercased, values trimmed with inner runs
/// of whitespace collapsed to one space, repeated names merged into one comma-separated value in
/// their original order, sorted by name.
public struct CanonicalHeaders: Sendable, Equatable {
    /// One "name:value\n" line per header, as in the canonical request.
    public let canonicalHeaders: String
    /// The header names joined by ";".
    public let signedHeaders: String

    public init(_ headers: [(name: String, value: String)]) {
        // A stable sort keeps repeated names in their order; every request is signed, so this
        // builds the two strings in one pass over bytes rather than through a dictionary of
        // arrays of Strings (about 90,000 instructions a request, callgrind).
        let sorted = headers.map { (name: Self.lowercased($0.name), value: $0.value) }.enumerated()
            .sorted { ($0.element.name, $0.offset) < ($1.element.name, $1.offset) }.map(\.element)
        var canonical: [UInt8] = []
        var signed: [UInt8] = []
        for (index, header) in sorted.enumerated() {
            let continuesName = index > 0 && sorted[index - 1].name == header.name
            if continuesName {
                canonical.removeLast()  // the previous value's newline
                canonical.append(UInt8(ascii: ","))
            } else {
                if index > 0 { signed.append(UInt8(ascii: ";")) }
                signed.append(contentsOf: header.name.utf8)
                canonical.append(contentsOf: header.name.utf8)
                canonical.append(UInt8(ascii: ":"))
            }
            Self.appendTrimmingAll(header.value, to: &canonical)
            canonical.append(UInt8(ascii: "\n"))
        }
        canonicalHeaders = String(decoding: canonical, as: UTF8.self)
        signedHeaders = String(decoding: signed, as: UTF8.self)
    }

    /// ASCII names (HTTP's) lowercased; any other name as `lowercased()` has it.
    private static func lowercased(_ name: String) -> String {
        guard name.utf8.contains(where: { (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || $0 >= 0x80 }) else {
            return name
        }
        return name.lowercased()
    }

    /// The value without leading and trailing spaces and tabs, each inner run of them one space.
    private static func appendTrimmingAll(_ value: String, to bytes: inout [UInt8]) {
        var pendingSpace = false
        var wroteAny = false
        for byte in value.utf8 {
            if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                pendingSpace = wroteAny
                continue
            }
            if pendingSpace { bytes.append(UInt8(ascii: " ")) }
            pendingSpace = false
            wroteAny = true
            bytes.append(byte)
        }
    }
}

/// The intermediate strings of one signature. S3 answers SignatureDoesNotMatch with its own
/// canonical request and string to sign, so these are what to compare when debugging one.
public struct SignatureCalculation: Sendable, Equatable {
    public let canonicalRequest: String
    public let stringToSign: String
    /// Lowercase hexadecimal.
    public let signature: String
}

/// The result of signing with the `Authorization` header.
public struct HeaderSignature: Sendable {
    /// Headers to send in addition to the request's own (and `host`).
    public let headersToAdd: [(name: String, value: String)]
    public let calculation: SignatureCalculation
}

/// The result of presigning.
public struct QuerySignature: Sendable {
    /// The whole query string to send after "?": the request's own parameters, the `X-Amz-*`
    /// parameters and `X-Amz-Signature`, encoded.
    public let queryString: String
    public let calculation: SignatureCalculation
}
