extension Sequence<UInt8> {
    /// Lowercase hexadecimal, two digits per byte: SigV4, ETags, content and key ids, state
    /// digests and object keys all spell bytes this way.
    public var lowercaseHex: String {
        var text: [UInt8] = []
        text.reserveCapacity(underestimatedCount * 2)
        // Callers in other modules run this unspecialized: contiguous bytes (arrays, buffers)
        // are read directly rather than through the sequence's witnesses a byte at a time.
        if withContiguousStorageIfAvailable({ Hex.append(UnsafeRawBufferPointer($0), to: &text) }) == nil {
            Hex.append(self, to: &text)
        }
        return String(decoding: text, as: UTF8.self)
    }
}

/// Hexadecimal digits, two per byte, high nibble first.
public enum Hex {
    private static let lowercaseDigits = Array("0123456789abcdef".utf8)
    private static let uppercaseDigits = Array("0123456789ABCDEF".utf8)

    /// Appends the hex form of `bytes` (lowercase unless `uppercase`) to `text`, without making a String.
    public static func append(_ bytes: some Sequence<UInt8>, to text: inout [UInt8], uppercase: Bool = false) {
        let digits = uppercase ? uppercaseDigits : lowercaseDigits
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
    }

    /// The same for bytes in memory (content ids in every state digest line): written straight
    /// into `text`'s new tail, where the generic version's iterator and two appends a byte cost
    /// about 50 instructions a byte, a fifth of an upload's in a 1,000-file session.
    public static func append(_ bytes: UnsafeRawBufferPointer, to text: inout [UInt8], uppercase: Bool = false) {
        let digits: StaticString = uppercase ? "0123456789ABCDEF" : "0123456789abcdef"
        let start = text.count
        text.append(contentsOf: repeatElement(0, count: bytes.count * 2))
        text.withUnsafeMutableBufferPointer { text in
            digits.withUTF8Buffer { digits in
                for (index, byte) in bytes.enumerated() {
                    text[start + 2 * index] = digits[Int(byte >> 4)]
                    text[start + 2 * index + 1] = digits[Int(byte & 0x0f)]
                }
            }
        }
    }

    /// The bytes `digits` spell; nil for an odd count or anything but a hex digit (an uppercase
    /// one only when `acceptingUppercase`: where a name has one spelling, "AB" is not "ab").
    public static func decode(_ digits: some Collection<UInt8>, acceptingUppercase: Bool = false) -> [UInt8]? {
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F") where acceptingUppercase: digit - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        guard digits.count.isMultiple(of: 2) else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = digits.startIndex
        while index != digits.endIndex {
            let next = digits.index(after: index)
            guard let high = value(digits[index]), let low = value(digits[next]) else { return nil }
            bytes.append(high << 4 | low)
            index = digits.index(after: next)
        }
        return bytes
    }
}
