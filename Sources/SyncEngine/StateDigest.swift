import SessionCrypto
import SystemSupport

/// FORMAT.md's `stateDigest` of format version 4: the sum modulo 2^256 of the SHA-256 of every
/// file's line, each read as a little-endian integer, written as 32 bytes little-endian. A sum,
/// so that a change updates it (the old line's hash subtracted, the new one's added) without
/// reading the session's other files.
struct StateDigest: Equatable, Sendable {
    /// The 64-bit words of the integer, least significant first.
    private var words: (UInt64, UInt64, UInt64, UInt64)

    /// No files.
    static let empty = StateDigest(words: (0, 0, 0, 0))

    private init(words: (UInt64, UInt64, UInt64, UInt64)) {
        self.words = words
    }

    /// A line's SHA-256 read as a little-endian integer.
    init(hashOf line: [UInt8]) {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        line.withUnsafeBytes { line in withUnsafeMutableBytes(of: &words) { SHA256.hash(line, into: $0) } }
        self.words = (UInt64(littleEndian: words.0), UInt64(littleEndian: words.1), UInt64(littleEndian: words.2), UInt64(littleEndian: words.3))
    }

    mutating func add(_ other: StateDigest) {
        var carry = false
        func sum(_ first: UInt64, _ second: UInt64) -> UInt64 {
            let (partial, overflow) = first.addingReportingOverflow(second)
            let (total, carried) = partial.addingReportingOverflow(carry ? 1 : 0)
            carry = overflow || carried
            return total
        }
        // Least significant word first: the carry goes up.
        let low = sum(words.0, other.words.0)
        let second = sum(words.1, other.words.1)
        let third = sum(words.2, other.words.2)
        words = (low, second, third, sum(words.3, other.words.3))
    }

    /// Subtraction modulo 2^256: adding the two's complement.
    mutating func subtract(_ other: StateDigest) {
        var negated = StateDigest(words: (~other.words.0, ~other.words.1, ~other.words.2, ~other.words.3))
        negated.add(StateDigest(words: (1, 0, 0, 0)))
        add(negated)
    }

    /// 64 lowercase hex digits of the 32 little-endian bytes.
    var hex: String {
        withUnsafeBytes(of: (words.0.littleEndian, words.1.littleEndian, words.2.littleEndian, words.3.littleEndian)) {
            $0.lowercaseHex
        }
    }

    static func == (lhs: StateDigest, rhs: StateDigest) -> Bool {
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2 && lhs.words.3 == rhs.words.3
    }
}

/// Spells a file's line as FORMAT.md's state digests take it, `name ‖ 0x00 ‖ decimal size ‖ 0x00 ‖
/// lowercase hex content id`, and hashes lines one after another through one buffer.
final class LineHasher {
    private var line: [UInt8] = []

    init() {
        line.reserveCapacity(1024)
    }

    /// The SHA-256 of one line (format version 4's term of the sum).
    func hash(_ name: UnsafeBufferPointer<UInt8>, _ record: FileRecord) -> StateDigest {
        line.removeAll(keepingCapacity: true)
        Self.appendLine(name, record, to: &line)
        return StateDigest(hashOf: line)
    }

    static func appendLine(_ name: UnsafeBufferPointer<UInt8>, _ record: FileRecord, to bytes: inout [UInt8]) {
        bytes.append(contentsOf: name)
        bytes.append(0)
        DecimalDigits.append(record.size, to: &bytes)  // a damaged manifest's size may be negative
        bytes.append(0)
        record.contentID.appendHex(to: &bytes)
    }
}
