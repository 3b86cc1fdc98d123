import FoundationEssentials
import SystemSupport

/// What a transfer sends: nothing, bytes in memory, or a region of an open file read with
/// pread so that parts of one file can be uploaded concurrently.
enum RequestBody: Sendable {
    case empty
    case bytes([UInt8])
    case file(fileDescriptor: FileDescriptor, offset: Int64, length: Int64)

    var length: Int64 {
        switch self {
        case .empty: 0
        case .bytes(let bytes): Int64(bytes.count)
        case .file(_, _, let length): length
        }
    }
}

/// Where a successful response body goes. Error bodies always go to memory, so the S3
/// error document can be parsed whatever the destination.
enum ResponseDestination: Sendable {
    case memory
    /// Written with pwrite from `offset` on, so that parts of one object can be downloaded
    /// into one file concurrently and a retried part rewrites only its own region.
    case file(fileDescriptor: FileDescriptor, offset: Int64)
}

struct CurlRequest: Sendable {
    var method: String
    var url: String
    var headers: [(name: String, value: String)]
    var body: RequestBody
    var destination: ResponseDestination
    /// The byte range asked for, so that a server ignoring `Range` (answering 200 with the
    /// whole object, as rclone does) can be detected and the range cut out here.
    var requestedRange: ClosedRange<Int64>?
    /// Compute the MD5 of a successful body when it is the whole object and its ETag is a
    /// plain MD5, so that it can be checked; hashing bodies nothing is checked against
    /// would cost a core for large downloads.
    var digestsWholeObjectBody: Bool
    var timeouts: S3Configuration.Timeouts
    var tls: S3Configuration.TLS
}

struct CurlResponse: Sendable {
    var status: Int
    var headers: [(name: String, value: String)]
    /// The body when it went to memory (always so for error statuses).
    var body: [UInt8]
    /// Bytes delivered to the destination, after any range cut.
    var bodyLength: Int64
    /// MD5 of the delivered body when `digestsWholeObjectBody` asked for it and the body is
    /// the whole object with a plain-MD5 ETag.
    var bodyMD5: [UInt8]?
    /// True when a range was requested and the server answered with the whole object, so
    /// the range was cut out here.
    var rangeIgnoredByServer: Bool

    func header(_ name: String) -> String? {
        headers.last { $0.name.caseInsensitiveCompare(name) }?.value
    }
}

private extension String {
    func caseInsensitiveCompare(_ other: String) -> Bool {
        lowercased() == other.lowercased()
    }
}
