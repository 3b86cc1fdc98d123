import Glibc
import SessionCrypto
import SystemSupport

/// A manifest's file and deleted lines, written and read without Foundation's JSON coders: a
/// restore or a claim reads one line per file of a session, and `JSONDecoder` took 15% of the
/// CPU of restoring 50 sessions of 1,000 files (perf).
///
/// The writer is `StoredJSONWriter`: what `JSONEncoder` with sorted keys writes, byte for byte,
/// FORMAT.md's form (`ManifestLineTests` compares the two). The reader takes that form, and
/// within it what `JSONDecoder` reads the same way (a content id in uppercase hex, a `/` not
/// escaped). On any other line (keys in another order, unknown keys, whitespace, a `\u` escape,
/// a number `JSONEncoder` would not write) it returns nil and `ManifestJSON` hands the line to
/// `JSONDecoder`, so what is read and what is refused stay what `JSONDecoder` reads and refuses.
enum ManifestLine {
    /// `{"contentID":…,"fingerprint":{…}?,"name":…,"size":…}`, without the newline.
    static func writeFile(name: String, record: FileRecord, to json: inout StoredJSONWriter) {
        json.object { json in
            json.key("contentID")
            json.contentID(record.contentID)
            if let fingerprint = record.fingerprint {
                json.key("fingerprint")
                json.object { json in
                    json.key("device")
                    json.integer(fingerprint.device)
                    json.key("inode")
                    json.integer(fingerprint.inode)
                    json.key("mode")
                    json.integer(UInt64(fingerprint.mode))
                    json.key("modificationTime")
                    json.integer(fingerprint.modificationTime)
                    json.key("size")
                    json.integer(fingerprint.size)
                }
            }
            json.key("name")
            json.string(name)
            json.key("size")
            json.integer(record.size)
        }
    }

    /// `{"deleted":…}`, without the newline.
    static func writeDeleted(name: String, to json: inout StoredJSONWriter) {
        json.object { json in
            json.key("deleted")
            json.string(name)
        }
    }

    /// A file line in the writer's form, or nil for any other line.
    static func parseFile(_ line: UnsafeRawBufferPointer) -> ManifestJSON.FileLine? {
        var cursor = Cursor(line)
        guard cursor.take("{\"contentID\":\""), let contentID = cursor.contentID(), cursor.take("\",") else { return nil }
        var fingerprint: FileState?
        if cursor.take("\"fingerprint\":{\"device\":") {
            guard let device = cursor.unsigned(), cursor.take(",\"inode\":"), let inode = cursor.unsigned(),
                  cursor.take(",\"mode\":"), let mode = cursor.unsigned(), let mode = UInt32(exactly: mode),
                  cursor.take(",\"modificationTime\":"), let modificationTime = cursor.signed(),
                  cursor.take(",\"size\":"), let size = cursor.signed(), cursor.take("},")
            else { return nil }
            fingerprint = FileState(size: size, mode: mode, modificationTime: modificationTime, inode: inode, device: device)
        }
        guard cursor.take("\"name\":"), let name = cursor.string(), cursor.take(",\"size\":"), let size = cursor.signed(),
              cursor.take("}"), cursor.atEnd
        else { return nil }
        return ManifestJSON.FileLine(name: name, size: size, contentID: contentID, fingerprint: fingerprint)
    }

    /// A deleted line's name in the writer's form, or nil for any other line.
    static func parseDeleted(_ line: UnsafeRawBufferPointer) -> ManifestJSON.DeletedLine? {
        var cursor = Cursor(line)
        guard cursor.take("{\"deleted\":"), let name = cursor.string(), cursor.take("}"), cursor.atEnd else { return nil }
        return ManifestJSON.DeletedLine(deleted: name)
    }

    /// Reads the writer's form: each call takes its piece at the cursor or returns false or nil,
    /// and a failed line is given up whole.
    private struct Cursor {
        private let bytes: UnsafeRawBufferPointer
        private var index = 0

        init(_ bytes: UnsafeRawBufferPointer) {
            self.bytes = bytes
        }

        var atEnd: Bool { index == bytes.count }

        mutating func take(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard bytes.count - index >= count,
                  memcmp(bytes.baseAddress! + index, text.utf8Start, count) == 0
            else { return false }
            index += count
            return true
        }

        /// 64 hex digits (either case, as `ContentID` reads them).
        mutating func contentID() -> ContentID? {
            let end = index + 2 * ContentID.byteCount
            guard end <= bytes.count, let id = ContentID(hex: UnsafeRawBufferPointer(rebasing: bytes[index..<end])) else {
                return nil
            }
            index = end
            return id
        }

        /// Digits as `JSONEncoder` writes an unsigned integer: no sign, no leading zero, no
        /// fraction or exponent, within `UInt64`.
        mutating func unsigned() -> UInt64? {
            let start = index
            var value: UInt64 = 0
            while index < bytes.count, case let digit = bytes[index] &- UInt8(ascii: "0"), digit < 10 {
                let (times10, overflow) = value.multipliedReportingOverflow(by: 10)
                let (sum, carry) = times10.addingReportingOverflow(UInt64(digit))
                guard !overflow, !carry else { return nil }
                value = sum
                index += 1
            }
            let count = index - start
            guard count > 0, count == 1 || bytes[start] != UInt8(ascii: "0") else { return nil }
            return value
        }

        /// The same with an optional `-` (never `-0`), within `Int64`.
        mutating func signed() -> Int64? {
            let negative = index < bytes.count && bytes[index] == UInt8(ascii: "-")
            if negative { index += 1 }
            guard let magnitude = unsigned() else { return nil }
            if negative {
                guard magnitude != 0, magnitude <= UInt64(Int64.max) + 1 else { return nil }
                return Int64(truncatingIfNeeded: 0 &- magnitude)
            }
            return Int64(exactly: magnitude)
        }

        /// A string with at most the escapes the writer writes but `\u`, which is left to
        /// `JSONDecoder` (surrogate pairs), as are a raw control character and invalid UTF-8.
        mutating func string() -> String? {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
            index += 1
            let start = index
            while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\") {
                guard bytes[index] >= 0x20 else { return nil }
                index += 1
            }
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "\"") {
                index += 1
                return String(validating: UnsafeRawBufferPointer(rebasing: bytes[start..<index - 1]), as: UTF8.self)
            }
            var unescaped = Array(bytes[start..<index])
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return String(validating: unescaped, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard index < bytes.count else { return nil }
                    let escaped = bytes[index]
                    index += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): unescaped.append(escaped)
                    case UInt8(ascii: "b"): unescaped.append(0x08)
                    case UInt8(ascii: "t"): unescaped.append(0x09)
                    case UInt8(ascii: "n"): unescaped.append(0x0a)
                    case UInt8(ascii: "f"): unescaped.append(0x0c)
                    case UInt8(ascii: "r"): unescaped.append(0x0d)
                    default: return nil
                    }
                case ..<0x20:
                    return nil
                default:
                    unescaped.append(byte)
                }
            }
            return nil
        }
    }
}
