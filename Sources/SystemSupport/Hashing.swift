import COpenSSL
import FoundationEssentials
import Glibc

// All OpenSSL calls of the package live here; the rest only sees byte arrays.

/// A digest algorithm that `StreamingDigest` can compute.
public enum DigestAlgorithm: Sendable {
    case sha256
    /// Only for `Content-MD5` and ETag checks, never for anything that needs collision resistance.
    case md5

    /// Digest length in bytes.
    public var length: Int {
        switch self {
        case .sha256: 32
        case .md5: 16
        }
    }

    fileprivate var evpMD: OpaquePointer {
        switch self {
        case .sha256: EVP_sha256()
        case .md5: EVP_md5()
        }
    }

    fileprivate var name: String {
        switch self {
        case .sha256: "SHA-256"
        case .md5: "MD5"
        }
    }
}

/// An incremental digest over one OpenSSL `EVP_MD_CTX`, for hashing a body chunk by chunk
/// while it streams. `finalize()` returns the digest and starts over, so one instance can hash
/// several bodies in a row (multipart parts, say).
public final class StreamingDigest {
    public let algorithm: DigestAlgorithm
    private let context: OpaquePointer

    public init(_ algorithm: DigestAlgorithm) {
        // Allocation fails only when the process is out of memory, and initialisation only when
        // OpenSSL refuses the algorithm (MD5 under a FIPS-only configuration): neither is
        // something a caller could recover from.
        guard let context = EVP_MD_CTX_new() else {
            fatalError("OpenSSL could not allocate a digest context")
        }
        self.algorithm = algorithm
        self.context = context
        restart()
    }

    deinit {
        EVP_MD_CTX_free(context)
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let start = bytes.baseAddress, !bytes.isEmpty else { return }
        requireSuccess(EVP_DigestUpdate(context, start, bytes.count), "update")
    }

    public func update(_ bytes: some Collection<UInt8>) {
        withContiguousBytes(of: bytes) { update($0) }
    }

    /// The digest of everything passed to `update` since the last `finalize()`.
    public func finalize() -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: algorithm.length)
        var length: UInt32 = 0
        requireSuccess(EVP_DigestFinal_ex(context, &digest, &length), "finalise")
        precondition(Int(length) == algorithm.length, "OpenSSL returned a \(length)-byte \(algorithm.name) digest")
        restart()
        return digest
    }

    private func restart() {
        requireSuccess(EVP_DigestInit_ex(context, algorithm.evpMD, nil), "initialise")
    }

    private func requireSuccess(_ result: Int32, _ step: String) {
        if result != 1 {
            fatalError("OpenSSL could not \(step) a \(algorithm.name) digest")
        }
    }
}

public enum SHA256 {
    public static func hash(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: DigestAlgorithm.sha256.length)
        withContiguousBytes(of: bytes) { bytes in digest.withUnsafeMutableBytes { hash(bytes, into: $0) } }
        return digest
    }

    /// The SHA-256 of one short message into `digest` (32 bytes), without a digest context's
    /// setup per call: for many small messages in a row (a state digest hashes a line per file).
    public static func hash(_ bytes: UnsafeRawBufferPointer, into digest: UnsafeMutableRawBufferPointer) {
        precondition(digest.count == DigestAlgorithm.sha256.length)
        var placeholder: UInt8 = 0
        withUnsafeMutablePointer(to: &placeholder) { empty in
            sync_agent_sha256(bytes.baseAddress ?? UnsafeRawPointer(empty), bytes.count, digest.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }
}

public enum MD5 {
    /// One message without a digest context's setup, as `SHA256.hash(_:into:)`.
    public static func hash(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: DigestAlgorithm.md5.length)
        // `withContiguousBytes` gives empty input a base address too.
        withContiguousBytes(of: bytes) { bytes in
            digest.withUnsafeMutableBufferPointer { sync_agent_md5(bytes.baseAddress!, bytes.count, $0.baseAddress!) }
        }
        return digest
    }
}

public enum HMACSHA256 {
    public static func authenticationCode(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
        var code = [UInt8](repeating: 0, count: DigestAlgorithm.sha256.length)
        var length: UInt32 = 0
        let result = withContiguousBytes(of: key) { key in
            withContiguousBytes(of: message) { message in
                HMAC(
                    EVP_sha256(),
                    key.baseAddress, Int32(key.count),
                    message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count,
                    &code, &length
                )
            }
        }
        if result == nil || Int(length) != code.count {
            fatalError("OpenSSL could not compute an HMAC-SHA256")
        }
        return code
    }
}

extension Sequence<UInt8> {
    /// Standard base64 with padding, as `Content-MD5` and `x-amz-checksum-*` headers use.
    public var base64: String {
        Data(self).base64EncodedString()
    }
}

/// Runs `body` over the bytes of `bytes` without copying when they are already contiguous.
/// Empty input still gets a non-nil base address: OpenSSL reads a NULL key as "reuse the last one".
private func withContiguousBytes<Result>(
    of bytes: some Collection<UInt8>,
    _ body: (UnsafeRawBufferPointer) -> Result
) -> Result {
    if bytes.isEmpty {
        var placeholder: UInt8 = 0
        return withUnsafeBytes(of: &placeholder) { body(UnsafeRawBufferPointer(rebasing: $0[0..<0])) }
    }
    if let result = bytes.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) {
        return result
    }
    return Array(bytes).withUnsafeBytes(body)
}
