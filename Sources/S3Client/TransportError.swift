import CCurl

/// A libcurl failure: the connection could not be made, broke, timed out, or TLS failed.
public struct TransportError: Error, CustomStringConvertible, Sendable {
    /// The CURLcode, or -1 for failures of the client itself.
    public let code: Int32
    public let message: String

    public var description: String { "transport error (curl \(code)): \(message)" }

    /// Failures that another attempt may not hit: the network, not the request.
    var isRetryable: Bool {
        switch CURLcode(UInt32(bitPattern: code)) {
        case CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
            CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE, CURLE_COULDNT_RESOLVE_HOST, CURLE_HTTP2,
            CURLE_HTTP2_STREAM:
            true
        default:
            false
        }
    }
}
