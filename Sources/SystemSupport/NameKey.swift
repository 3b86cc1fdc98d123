/// A name's UTF-8 bytes as a set or dictionary key. Compared bytewise: String's == takes
/// canonically equivalent names ("é" and "e\u{301}", two files on Linux) for one. Hashed in one
/// call over the bytes: `[UInt8]`'s own hashing feeds the hasher a byte at a time, which was 4%
/// of the CPU of a restore that keys every file's name (perf).
public struct NameKey: Hashable, Sendable {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    public init(_ name: some StringProtocol) {
        bytes = Array(name.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}
