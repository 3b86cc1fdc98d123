import SystemSupport

/// Everything needed to talk to one bucket: where, as whom, and how patiently.
public struct S3Configuration: Sendable {
    public enum Addressing: String, Sendable, CaseIterable {
        /// `http://host/bucket/key`: MinIO's and SeaweedFS's default.
        case path
        /// `http://bucket.host/key`: AWS's default.
        case virtualHosted = "virtual-hosted"
    }

    public struct Endpoint: Sendable, Equatable {
        public var scheme: String
        public var host: String
        public var port: Int?

        /// Parses `http(s)://host[:port][/]`; a bare `host[:port]` means https.
        public init(parsing text: String) throws(S3ConfigurationError) {
            let shown = Self.withoutUserinfo(text)
            var rest = Substring(text.trimmingWhitespace())
            var scheme = "https"
            if let range = rest.firstRange(of: "://") {
                scheme = rest[..<range.lowerBound].lowercased()
                rest = rest[range.upperBound...]
            }
            guard scheme == "http" || scheme == "https" else {
                throw .invalid("endpoint \(shown): the scheme must be http or https")
            }
            guard !rest.contains("@") else {
                throw .invalid(
                    "endpoint \(shown): credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            }
            while rest.hasSuffix("/") { rest = rest.dropLast() }
            guard !rest.isEmpty, !rest.contains("/"), !rest.contains("?") else {
                throw .invalid("endpoint \(shown): expected http(s)://host[:port] with no path")
            }
            var port: Int?
            if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
                guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                    throw .invalid("endpoint \(shown): the port must be a number from 1 to 65535")
                }
                port = number
                rest = rest[..<colon]
            }
            self.init(scheme: scheme, host: String(rest), port: port)
        }

        public init(scheme: String, host: String, port: Int?) {
            self.scheme = scheme
            self.host = host
            self.port = port
        }

        /// `text` for a message: what comes before an "@" (a user and password, in
        /// `http://user:password@host`) replaced by "***", up to the last "@" since a password
        /// written unencoded may hold one, or a "/".
        static func withoutUserinfo(_ text: String) -> String {
            guard let at = text.lastIndex(of: "@") else { return text }
            let start = text.firstRange(of: "://").map(\.upperBound).flatMap { $0 <= at ? $0 : nil } ?? text.startIndex
            return String(text[..<start]) + "***" + String(text[at...])
        }

        /// The Host header: the port only when it is not the scheme's default.
        var authority: String {
            guard let port, port != (scheme == "https" ? 443 : 80) else { return host }
            return "\(host):\(port)"
        }
    }

    public struct Timeouts: Sendable {
        public var connect: Duration = .seconds(5)
        /// A transfer that moves no byte for this long fails and is retried.
        public var idle: Duration = .seconds(30)
        /// An upper bound on one whole request, or none so large objects are not cut off.
        public var request: Duration? = nil
        public init() {}
    }

    public struct TLS: Sendable {
        public var verifyCertificates = true
        public var caBundlePath: String?
        public init() {}
    }

    public struct Multipart: Sendable {
        /// Objects of at least this size go up in parts.
        public var threshold: Int64 = 64 << 20
        public var partSize: Int64 = 16 << 20
        /// Parts of one object in flight at once.
        public var concurrency = 4
        public init() {}
    }

    public var endpoint: Endpoint
    public var region: String
    public var bucket: String
    public var credentials: AWSCredentials
    public var addressing: Addressing
    public var timeouts = Timeouts()
    public var tls = TLS()
    public var retry = RetryPolicy()
    public var multipart = Multipart()
    /// Connections kept open to the endpoint; requests beyond this queue in the client.
    public var maxConnections = 16
    /// Check the MD5 of downloaded bodies against single-part ETags.
    public var verifyDownloads = true

    public init(
        endpoint: Endpoint, region: String = "us-east-1", bucket: String, credentials: AWSCredentials,
        addressing: Addressing = .path
    ) {
        self.endpoint = endpoint
        self.region = region
        self.bucket = bucket
        self.credentials = credentials
        self.addressing = addressing
    }

    /// Fills what the flags left open from the environment: the AWS names first, then the
    /// MinIO names (`MINIO_ENDPOINT`, `MINIO_PORT`, `MINIO_USE_SSL`, `MINIO_ACCESS_KEY`,
    /// `MINIO_SECRET_KEY`) that gateways already use.
    public static func resolve(
        bucket: String, endpoint: String? = nil, region: String? = nil, addressing: Addressing? = nil,
        accessKeyID: String? = nil, secretAccessKey: String? = nil, sessionToken: String? = nil,
        environment: [String: String]
    ) throws(S3ConfigurationError) -> S3Configuration {
        func value(_ names: String...) -> String? {
            names.lazy.compactMap { environment[$0] }.first { !$0.isEmpty }
        }
        let region = region ?? value("AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION") ?? "us-east-1"
        guard let accessKeyID = accessKeyID ?? value("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER") else {
            throw .invalid("no S3 access key: set AWS_ACCESS_KEY_ID (or MINIO_ACCESS_KEY) or pass --access-key-id")
        }
        guard let secret = secretAccessKey ?? value("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")
        else {
            throw .invalid("no S3 secret key: set AWS_SECRET_ACCESS_KEY (or MINIO_SECRET_KEY)")
        }
        let credentials = AWSCredentials(
            accessKeyID: accessKeyID, secretAccessKey: secret,
            sessionToken: sessionToken ?? value("AWS_SESSION_TOKEN"))

        let parsedEndpoint: Endpoint
        let defaultAddressing: Addressing
        if let text = endpoint ?? value("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") {
            parsedEndpoint = try Endpoint(parsing: text)
            defaultAddressing = .path
        } else if let minio = value("MINIO_ENDPOINT") {
            var parsed = try Endpoint(parsing: minio)
            if !minio.contains("://") {
                // MinIO clients spell TLS as a separate switch and default to plain http.
                let useSSL = value("MINIO_USE_SSL").map { ["1", "true", "yes"].contains($0.lowercased()) } ?? false
                parsed.scheme = useSSL ? "https" : "http"
            }
            if parsed.port == nil, let port = value("MINIO_PORT") {
                guard let number = Int(port), (1...65535).contains(number) else {
                    throw .invalid("MINIO_PORT \(port): must be a number from 1 to 65535")
                }
                parsed.port = number
            }
            parsedEndpoint = parsed
            defaultAddressing = .path
        } else {
            parsedEndpoint = Endpoint(scheme: "https", host: "s3.\(region).amazonaws.com", port: nil)
            defaultAddressing = .virtualHosted
        }
        guard isValidBucketName(bucket) else {
            throw .invalid("bucket name \(bucket): use 3 to 63 lowercase letters, digits, dots and hyphens")
        }
        return S3Configuration(
            endpoint: parsedEndpoint, region: region, bucket: bucket, credentials: credentials,
            addressing: addressing ?? defaultAddressing)
    }

    static func isValidBucketName(_ name: String) -> Bool {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789.-")
        return (3...63).contains(name.count) && name.allSatisfy(allowed.contains)
            && name.first!.isLetterOrDigit && name.last!.isLetterOrDigit
    }
}

public struct S3ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    static func invalid(_ message: String) -> S3ConfigurationError { S3ConfigurationError(description: message) }
}

private extension Character {
    var isLetterOrDigit: Bool { isASCII && (isLetter || isNumber) }
}
