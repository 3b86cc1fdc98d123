/// Checks that bytes are one JSON text in RFC 8259's strictest reading, without building
/// anything: UTF-8 without a byte order mark, at most `maxDepth` arrays and objects deep, no
/// `\u` escape of a surrogate. `StableFileReader` checks every `*.json` file it reads with it, and
/// asks `JSONDecoder` only about a file this check refuses (a torn one, or an unusual one), which
/// was 9% of a first start's CPU when `JSONDecoder` read every file (perf).
///
/// So what this check accepts must be what `JSONDecoder` accepts too (`JSONSyntaxTests` compares
/// them on altered documents); what it refuses goes to `JSONDecoder`, which has the last word.
enum JSONSyntax {
    /// Deeper documents are left to `JSONDecoder` (whose own limit is 512).
    static let maxDepth = 256

    static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var scanner = Scanner(bytes: bytes)
        scanner.skipWhitespace()
        guard scanner.value(depth: 0) else { return false }
        scanner.skipWhitespace()
        return scanner.atEnd
    }

    private struct Scanner {
        let bytes: UnsafeRawBufferPointer
        var index = 0

        var atEnd: Bool { index == bytes.count }

        private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipWhitespace() {
            while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d { index += 1 }
        }

        mutating func value(depth: Int) -> Bool {
            guard let byte = current else { return false }
            switch byte {
            case UInt8(ascii: "{"): return object(depth: depth + 1)
            case UInt8(ascii: "["): return array(depth: depth + 1)
            case UInt8(ascii: "\""): return string()
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return number()
            default: return false
            }
        }

        private mutating func object(depth: Int) -> Bool {
            container(depth: depth, closedBy: UInt8(ascii: "}")) { scanner in
                guard scanner.current == UInt8(ascii: "\""), scanner.string() else { return false }
                scanner.skipWhitespace()
                guard scanner.current == UInt8(ascii: ":") else { return false }
                scanner.index += 1
                scanner.skipWhitespace()
                return scanner.value(depth: depth)
            }
        }

        private mutating func array(depth: Int) -> Bool {
            container(depth: depth, closedBy: UInt8(ascii: "]")) { $0.value(depth: depth) }
        }

        /// An object or an array from its opening bracket: members read by `member`, separated
        /// by commas, until `closing`.
        private mutating func container(depth: Int, closedBy closing: UInt8, member: (inout Scanner) -> Bool) -> Bool {
            guard depth <= JSONSyntax.maxDepth else { return false }
            index += 1
            skipWhitespace()
            if current == closing {
                index += 1
                return true
            }
            while true {
                guard member(&self) else { return false }
                skipWhitespace()
                switch current {
                case UInt8(ascii: ","):
                    index += 1
                    skipWhitespace()
                case closing:
                    index += 1
                    return true
                default:
                    return false
                }
            }
        }

        private mutating func literal(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard bytes.count - index >= count else { return false }
            for offset in 0..<count where bytes[index + offset] != text.utf8Start[offset] { return false }
            index += count
            return true
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        private mutating func number() -> Bool {
            if current == UInt8(ascii: "-") { index += 1 }
            if current == UInt8(ascii: "0") {
                index += 1
            } else {
                guard digits() else { return false }
            }
            if current == UInt8(ascii: ".") {
                index += 1
                guard digits() else { return false }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                guard digits() else { return false }
            }
            return true
        }

        /// One or more.
        private mutating func digits() -> Bool {
            let start = index
            while let byte = current, byte &- UInt8(ascii: "0") < 10 { index += 1 }
            return index > start
        }

        private mutating func string() -> Bool {
            index += 1
            while let byte = current {
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return true
                case UInt8(ascii: "\\"):
                    index += 1
                    guard escape() else { return false }
                case ..<0x20:
                    return false
                case ..<0x80:
                    index += 1
                default:
                    guard utf8Sequence() else { return false }
                }
            }
            return false
        }

        private mutating func escape() -> Bool {
            guard let byte = current else { return false }
            index += 1
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                return true
            case UInt8(ascii: "u"):
                guard bytes.count - index >= 4 else { return false }
                var scalar: UInt32 = 0
                for _ in 0..<4 {
                    guard let digit = Self.hexValue(bytes[index]) else { return false }
                    scalar = scalar << 4 | UInt32(digit)
                    index += 1
                }
                return !(0xD800...0xDFFF).contains(scalar)
            default:
                return false
            }
        }

        private static func hexValue(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
            default: nil
            }
        }

        /// One well-formed UTF-8 sequence of two to four bytes (Unicode's table 3-7: no overlong
        /// form, no surrogate, nothing above U+10FFFF).
        private mutating func utf8Sequence() -> Bool {
            let lead = bytes[index]
            let count: Int
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: count = 2
            case 0xE0: (count, low) = (3, 0xA0)
            case 0xE1...0xEC, 0xEE...0xEF: count = 3
            case 0xED: (count, high) = (3, 0x9F)
            case 0xF0: (count, low) = (4, 0x90)
            case 0xF1...0xF3: count = 4
            case 0xF4: (count, high) = (4, 0x8F)
            default: return false
            }
            guard bytes.count - index >= count else { return false }
            let second = bytes[index + 1]
            guard second >= low, second <= high else { return false }
            for offset in 2..<count where bytes[index + offset] & 0xC0 != 0x80 { return false }
            index += count
            return true
        }
    }
}
