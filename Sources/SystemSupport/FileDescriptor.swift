import Glibc

/// An open file descriptor, closed exactly once: when its owner goes. Whatever a type does with
/// a descriptor, holding one of these instead of an `Int32` makes a leak or a double close
/// impossible to write.
public final class FileDescriptor: Sendable {
    public let raw: Int32
    /// What the descriptor is open on, for error messages only.
    public let path: String

    /// Takes ownership of `raw`, which must be open.
    public init(owning raw: Int32, path: String) {
        precondition(raw >= 0, "a FileDescriptor owns an open descriptor")
        self.raw = raw
        self.path = path
    }

    deinit {
        close(raw)
    }

    /// Two connected sockets of `type` (SOCK_CLOEXEC added), as socketpair(2) makes them.
    public static func socketPair(type: Int32, path: String) throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw SystemError("socketpair", path: path)
        }
        return (FileDescriptor(owning: pair[0], path: path), FileDescriptor(owning: pair[1], path: path))
    }
}
