/// An error answer from the S3 server, from its status and XML error document.
public struct S3Error: Error, CustomStringConvertible, Sendable, Equatable {
    /// What the error means for the caller; the raw `code` stays available.
    public enum Kind: Sendable, Equatable {
        case notFound
        case noSuchBucket
        case preconditionFailed
        case notModified
        case accessDenied
        case invalidCredentials
        case throttled
        case serverError
        case clientError
    }

    public let status: Int
    /// The S3 error code, such as `NoSuchKey` or `SignatureDoesNotMatch`; empty when the
    /// server sent no error document (HEAD requests never carry one).
    public let code: String
    public let message: String
    public let requestID: String?
    /// The bucket or key the request concerned.
    public let resource: String

    public var kind: Kind {
        switch (status, code) {
        case (_, "NoSuchBucket"): .noSuchBucket
        case (404, _), (_, "NoSuchKey"): .notFound
        case (412, _), (_, "PreconditionFailed"): .preconditionFailed
        case (304, _): .notModified
        case (_, "SignatureDoesNotMatch"), (_, "InvalidAccessKeyId"), (_, "ExpiredToken"),
            (_, "InvalidToken"), (_, "AuthorizationHeaderMalformed"):
            .invalidCredentials
        case (403, _): .accessDenied
        case (429, _), (_, "SlowDown"), (_, "Throttling"), (_, "RequestLimitExceeded"): .throttled
        case (500..., _): .serverError
        default: .clientError
        }
    }

    /// Worth another attempt: the server is overloaded or failing, not refusing the request.
    public var isRetryable: Bool {
        kind == .throttled || kind == .serverError
    }

    public var description: String {
        var text = "S3 \(status)"
        if !code.isEmpty { text += " \(code)" }
        text += " for \(resource)"
        if !message.isEmpty { text += ": \(message)" }
        switch kind {
        case .invalidCredentials: text += " (check the access key and secret)"
        case .noSuchBucket: text += " (create the bucket first)"
        default: break
        }
        if let requestID { text += " [request id \(requestID)]" }
        return text
    }

    init(status: Int, body: [UInt8], requestID: String?, resource: String) {
        self.status = status
        self.requestID = requestID
        self.resource = resource
        if !body.isEmpty, let document = try? XMLElement.parse(body), document.name == "Error" {
            code = document.text(of: "Code") ?? ""
            message = String((document.text(of: "Message") ?? "").prefix(500))
        } else {
            code = ""
            message = ""
        }
    }
}

/// Every way an S3 call can fail.
public enum S3ClientError: Error, CustomStringConvertible, Sendable {
    /// The server answered with an error status.
    case service(S3Error)
    /// The request did not complete: connection, timeout, TLS.
    case transport(TransportError)
    /// The server's answer made no sense: unparsable XML, missing fields.
    case invalidResponse(String)
    /// The body arrived but is not what was sent: length or checksum mismatch.
    case integrity(String)
    /// A local file could not be read or written.
    case io(String)
    /// Refused before it was signed or sent: a header that would not reach the server as one
    /// header (a value holding CR, LF or NUL would split the request or be cut short).
    case invalidRequest(String)
    /// The object is `size` bytes, more than the `maxSize` the caller allowed: not read further.
    case tooLarge(size: Int64, maxSize: Int64)
    /// A listing past its bound, or repeating a page: not read further.
    case listingTooLong(String)

    public var description: String {
        switch self {
        case .service(let error): "\(error)"
        case .transport(let error): "\(error)"
        case .invalidResponse(let reason): "invalid S3 response: \(reason)"
        case .integrity(let reason): "S3 integrity check failed: \(reason)"
        case .io(let reason): reason
        case .invalidRequest(let reason): "invalid S3 request: \(reason)"
        case .tooLarge(let size, let maxSize): "the object is \(size) bytes, more than the \(maxSize) allowed; not reading it"
        case .listingTooLong(let reason): reason
        }
    }

    /// The server's error kind, when the server answered.
    public var serviceKind: S3Error.Kind? {
        if case .service(let error) = self { return error.kind }
        return nil
    }

    public var isNotFound: Bool { serviceKind == .notFound }

    var isRetryable: Bool {
        switch self {
        case .service(let error): error.isRetryable
        case .transport(let error): error.isRetryable
        // A body cut short or mangled in transit is worth fetching again.
        case .integrity: true
        case .invalidResponse, .io, .invalidRequest, .tooLarge, .listingTooLong: false
        }
    }
}
