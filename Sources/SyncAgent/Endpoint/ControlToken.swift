import Glibc
import NIOHTTP1
import SystemSupport

/// The bearer token that opens the control routes on TCP (`watch --control-token-file`). The
/// file must be a regular file, not a symbolic link, readable by its owner only (0600 or
/// 0400): a token others can read opens the sessions to them. The token is never logged,
/// and compared in time that depends on its length only.
struct ControlToken: Sendable {
    private let bytes: [UInt8]

    /// A shorter token can be guessed; a longer file is not a token.
    static let shortest = 16
    static let longest = 4096

    init(bytes: [UInt8]) { self.bytes = bytes }

    static func read(from path: String) throws(ConfigurationError) -> ControlToken {
        func refusal(_ why: String) -> ConfigurationError {
            ConfigurationError(.badControlToken, "--control-token-file \(path): \(why)")
        }
        let descriptor = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else {
            throw refusal(errno == ELOOP ? "is a symbolic link; name the file itself" : String(cString: strerror(errno)).lowercased())
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw refusal(String(cString: strerror(errno)).lowercased()) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw refusal("not a regular file") }
        let permissions = status.st_mode & 0o777
        guard permissions & 0o077 == 0 else {
            throw refusal("readable by others (mode \(String(permissions, radix: 8))): chmod 0600 it")
        }
        var content = [UInt8](repeating: 0, count: longest + 1)
        var count = 0
        while count < content.count {
            let read = content.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + count, $0.count - count) }
            if read < 0 && errno == EINTR { continue }
            guard read >= 0 else { throw refusal(String(cString: strerror(errno)).lowercased()) }
            if read == 0 { break }
            count += read
        }
        guard count <= longest else { throw refusal("longer than \(longest) bytes: not a token") }
        var token = content[..<count]
        while let last = token.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") { token.removeLast() }
        guard token.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw refusal("the token must be one line of printable ASCII without spaces")
        }
        guard token.count >= shortest else { throw refusal("the token is shorter than \(shortest) characters") }
        return ControlToken(bytes: Array(token))
    }

    /// The token itself, for a client's `Authorization` header only.
    var secret: String { String(decoding: bytes, as: UTF8.self) }

    /// Whether `Authorization` is "Bearer " and this token.
    func authorizes(_ headers: HTTPHeaders) -> Bool {
        let values = headers["authorization"]
        guard values.count == 1 else { return false }
        let value = Array(values[0].utf8)
        let scheme = Array("bearer ".utf8)
        guard value.count > scheme.count, value.prefix(scheme.count).map({ $0 | 0x20 }) == scheme else { return false }
        return matches(Array(value.dropFirst(scheme.count)))
    }

    /// Constant time in the token's length: every byte is compared whatever differs first.
    func matches(_ given: [UInt8]) -> Bool {
        var difference: UInt8 = given.count == bytes.count ? 0 : 1
        for index in bytes.indices {
            difference |= bytes[index] ^ (index < given.count ? given[index] : 0)
        }
        return difference == 0
    }
}
