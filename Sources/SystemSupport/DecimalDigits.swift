/// Integers in decimal ASCII digits, as `String(value)` spells them, appended to bytes without
/// making the String: state digest lines and manifest lines spell a size or a time for every
/// file they write, and a String of more than 15 digits (a time in nanoseconds) is a heap object.
public enum DecimalDigits {
    public static func append(_ value: Int64, to bytes: inout [UInt8]) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        append(value.magnitude, to: &bytes)
    }

    public static func append(_ value: UInt64, to bytes: inout [UInt8]) {
        // 20 digits: UInt64.max has 20.
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { digits in
            var remaining = value
            var start = 20
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
            } while remaining > 0
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: digits[start..<20]))
        }
    }
}
