import SystemSupport

/// File and session names are bytes on Linux (anything but `/` and NUL), while the agent keeps
/// names as Swift `String`s (manifests are JSON, object keys and logs are text). This is the one
/// mapping between the two, lossless both ways, used wherever a name comes from or goes to the
/// file system:
///
/// - a name that is valid UTF-8 is the same `String` (every name Baileys writes, and every name
///   a format version 2 manifest could hold, are unchanged);
/// - each byte that is not part of a valid UTF-8 sequence, byte `b` in `0x80...0xFF`, becomes the
///   scalar `U+10FF00 + b` (`U+10FF80...U+10FFFF`, the end of the private use plane 16);
/// - a valid UTF-8 sequence for one of those 128 scalars is itself escaped byte by byte, so the
///   escapes never collide with a real name.
///
/// `bytes(of:)` reverses it: a scalar in `U+10FF80...U+10FFFF` is the byte it stands for, any
/// other scalar its UTF-8. FORMAT.md ("Names") specifies the same rule for independent readers.
public enum FileName {
    /// The first of the 128 escape scalars: byte `b` is `escapeBase + b` for `b >= 0x80`.
    static let escapeBase: UInt32 = 0x10FF00
    static let firstEscape: UInt32 = 0x10FF80

    /// The name for the raw bytes of a directory entry (or a path).
    public static func decode(_ bytes: some Collection<UInt8>) -> String {
        // Callers are in other modules, so this runs unspecialized: scanning the bytes here went
        // through the collection's witnesses a byte at a time (15% of a restart's CPU on a
        // session of 100,000 files, perf). Contiguous bytes (every caller's) are read directly.
        bytes.withContiguousStorageIfAvailable { decode(contiguous: UnsafeRawBufferPointer($0)) }
            ?? Array(bytes).withUnsafeBytes { decode(contiguous: $0) }
    }

    private static func decode(contiguous bytes: UnsafeRawBufferPointer) -> String {
        // Fast path: valid UTF-8 without the lead byte 0xF4 (which every escape scalar's
        // UTF-8 starts with) is its own name.
        if !bytes.contains(0xF4), let name = String(validating: bytes, as: UTF8.self) { return name }
        let bytes = Array(bytes)
        var scalars = String.UnicodeScalarView()
        var index = 0
        while index < bytes.count {
            if let (scalar, length) = validScalar(in: bytes, at: index), scalar.value < firstEscape {
                scalars.append(scalar)
                index += length
            } else {
                let escaped = bytes[index]
                // ASCII is always valid: only bytes 0x80...0xFF get here.
                scalars.append(Unicode.Scalar(escapeBase + UInt32(escaped))!)
                index += 1
            }
        }
        return String(scalars)
    }

    /// The raw bytes a name (or a path made of names and `/`) stands for.
    public static func bytes(of name: String) -> [UInt8] {
        if !name.utf8.contains(0xF4) { return Array(name.utf8) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(name.utf8.count)
        for scalar in name.unicodeScalars {
            if scalar.value >= firstEscape {
                bytes.append(UInt8(scalar.value - escapeBase))
            } else {
                bytes.append(contentsOf: String(scalar).utf8)
            }
        }
        return bytes
    }

    /// Calls `body` with the NUL-terminated raw bytes of `path`, for a system call. Every system
    /// call that takes a session's name or a file's name goes through here: passing the `String`
    /// itself would hand the kernel the escapes' UTF-8 instead of the name's bytes.
    public static func withPlatformPath<Result>(_ path: String, _ body: (UnsafePointer<CChar>) throws -> Result) rethrows -> Result {
        if !path.utf8.contains(0xF4) { return try path.withCString(body) }
        var terminated = bytes(of: path)
        terminated.append(0)
        return try terminated.withUnsafeBufferPointer { try $0.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) } }
    }

    /// `name` for a log line or a message: printable as it is, with control characters,
    /// backslashes and the bytes that are not UTF-8 written as `\n`, `\\`, `\xNN`, so a name can
    /// neither forge a log line nor hide what it is. `escapingBackslashes: false` leaves
    /// backslashes as they are: for text that may already hold names shown this way (a whole log
    /// line), which must not be escaped twice; it still cannot hold a line break.
    public static func displayed(_ name: String, escapingBackslashes: Bool = true) -> String {
        func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
            scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value >= firstEscape
                || scalar.value == 0x2028 || scalar.value == 0x2029 || (escapingBackslashes && scalar == "\\")
        }
        guard name.unicodeScalars.contains(where: needsEscape) else { return name }
        var shown = ""
        for scalar in name.unicodeScalars {
            guard needsEscape(scalar) else {
                shown.unicodeScalars.append(scalar)
                continue
            }
            switch scalar {
            case "\n": shown += "\\n"
            case "\r": shown += "\\r"
            case "\t": shown += "\\t"
            case "\\": shown += "\\\\"
            default:
                if scalar.value >= firstEscape {
                    shown += "\\x" + CollectionOfOne(UInt8(scalar.value - escapeBase)).lowercaseHex
                } else {
                    shown += String(scalar).utf8.map { "\\x" + CollectionOfOne($0).lowercaseHex }.joined()
                }
            }
        }
        return shown
    }

    /// The scalar of the well-formed UTF-8 sequence at `index` and its length (Unicode's
    /// table 3-7: no overlong forms, no surrogates, nothing past U+10FFFF), or nil.
    private static func validScalar(in bytes: [UInt8], at index: Int) -> (Unicode.Scalar, Int)? {
        let lead = bytes[index]
        if lead < 0x80 { return (Unicode.Scalar(lead), 1) }
        let length: Int
        let secondRange: ClosedRange<UInt8>
        switch lead {
        case 0xC2...0xDF: (length, secondRange) = (2, 0x80...0xBF)
        case 0xE0: (length, secondRange) = (3, 0xA0...0xBF)
        case 0xE1...0xEC, 0xEE...0xEF: (length, secondRange) = (3, 0x80...0xBF)
        case 0xED: (length, secondRange) = (3, 0x80...0x9F)
        case 0xF0: (length, secondRange) = (4, 0x90...0xBF)
        case 0xF1...0xF3: (length, secondRange) = (4, 0x80...0xBF)
        case 0xF4: (length, secondRange) = (4, 0x80...0x8F)
        default: return nil
        }
        guard index + length <= bytes.count, secondRange.contains(bytes[index + 1]) else { return nil }
        var value = UInt32(lead) & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
        value = value << 6 | UInt32(bytes[index + 1] & 0x3F)
        for offset in 2..<length {
            let byte = bytes[index + offset]
            guard (0x80...0xBF).contains(byte) else { return nil }
            value = value << 6 | UInt32(byte & 0x3F)
        }
        return Unicode.Scalar(value).map { ($0, length) }
    }
}
