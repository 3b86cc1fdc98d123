import FoundationEssentials
import Glibc
import SessionCrypto
import SystemSupport

/// Writes JSON as `StoredJSON.encoder()` writes it, byte for byte, without Foundation's encoder:
/// every upload writes a manifest (a header, a line per file) and a head, and `JSONEncoder` was
/// 6–8% of the sidecar's CPU for them (perf, bench/sidecar) after the manifest's file lines
/// stopped using it. The caller writes an object's keys in sorted order, as `.sortedKeys` does
/// (by their UTF-8 bytes); `StoredJSONWriterTests` and `ManifestLineTests` compare every kind of
/// document written this way with `JSONEncoder`'s, and check that each writes every field.
///
/// The form: no whitespace; in strings `"`, `\` and `/` escaped with a backslash, the control
/// characters with JSON's short escapes where there is one and `\u00xx` (lowercase) otherwise,
/// everything else as its UTF-8; integers in decimal; dates in ISO 8601, UTC, to the second.
struct StoredJSONWriter {
    private(set) var bytes: [UInt8]
    /// Whether the next key follows a member of the same object.
    private var needsComma = false

    init(reservingCapacity capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Ends a JSON Lines line; the next object starts the next line.
    mutating func endLine() {
        bytes.append(UInt8(ascii: "\n"))
        needsComma = false
    }

    /// Forgets what was written (handed on), keeping the buffer.
    mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        needsComma = false
    }

    mutating func beginObject() {
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
    }

    mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    /// A member's key; its value is written next. Keys are plain ASCII names.
    mutating func key(_ name: StaticString) {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        needsComma = true
    }

    mutating func string(_ text: String) {
        var text = text
        bytes.append(UInt8(ascii: "\""))
        text.withUTF8 { utf8 in
            for byte in utf8 {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"):
                    bytes.append(UInt8(ascii: "\\"))
                    bytes.append(byte)
                case 0x08: append("\\b")
                case 0x09: append("\\t")
                case 0x0a: append("\\n")
                case 0x0c: append("\\f")
                case 0x0d: append("\\r")
                case ..<0x20:
                    append("\\u00")
                    Hex.append(CollectionOfOne(byte), to: &bytes)
                default:
                    bytes.append(byte)
                }
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func integer(_ value: Int64) { DecimalDigits.append(value, to: &bytes) }

    mutating func integer(_ value: UInt64) { DecimalDigits.append(value, to: &bytes) }

    mutating func integer(_ value: Int) { DecimalDigits.append(Int64(value), to: &bytes) }

    mutating func bool(_ value: Bool) { append(value ? "true" : "false") }

    /// Its 64 lowercase hex digits, as a string, without making the String.
    mutating func contentID(_ id: ContentID) {
        bytes.append(UInt8(ascii: "\""))
        id.appendHex(to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    /// `2025-11-20T10:16:02Z`: the second the date falls in, as Foundation takes it (the seconds
    /// since 2001 rounded down: the seconds since 1970 as a Double can round a fraction just
    /// below a second up to the next). Outside years 1583 to 9999 (Foundation's calendar is
    /// Julian before 1583; a later year has more digits), `JSONEncoder` writes the date itself.
    mutating func date(_ date: Date) {
        var parts = tm()
        guard let sinceReference = time_t(exactly: date.timeIntervalSinceReferenceDate.rounded(.down)),
              case var seconds = sinceReference &+ 978_307_200, gmtime_r(&seconds, &parts) != nil,
              (1583 - 1900...9999 - 1900).contains(parts.tm_year)
        else {
            // JSONEncoder writes any date; were it to fail, "" is a date no reader takes.
            bytes += (try? StoredJSON.encoder().encode(date)).map { Array($0) } ?? Array("\"\"".utf8)
            return
        }
        bytes.append(UInt8(ascii: "\""))
        digits(Int(parts.tm_year) + 1900, count: 4)
        bytes.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, count: 2)
        bytes.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), count: 2)
        bytes.append(UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), count: 2)
        bytes.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_min), count: 2)
        bytes.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), count: 2)
        append("Z\"")
    }

    /// A value that is itself an object.
    mutating func object(_ body: (inout StoredJSONWriter) -> Void) {
        beginObject()
        body(&self)
        endObject()
    }

    private mutating func digits(_ value: Int, count: Int) {
        var divisor = 1
        for _ in 1..<count { divisor *= 10 }
        while divisor > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
            divisor /= 10
        }
    }

    private mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }
}

extension SnapshotID {
    func write(to json: inout StoredJSONWriter) {
        json.object { json in
            json.key("generation")
            json.integer(generation)
            json.key("sequence")
            json.integer(sequence)
            json.key("tag")
            json.string(tag.rawValue)
        }
    }
}

extension SessionIdentity {
    func write(to json: inout StoredJSONWriter) {
        json.object { json in
            json.key("authState")
            json.string(authState.rawValue)
            if let fingerprint {
                json.key("fingerprint")
                json.string(fingerprint)
            }
            if let keyID {
                json.key("keyID")
                json.string(keyID)
            }
            json.key("registered")
            json.bool(registered)
        }
    }
}

extension SessionHead {
    /// The head's JSON, as `JSONEncoder` with `StoredJSON`'s settings writes it.
    package func encoded() -> [UInt8] {
        var json = StoredJSONWriter()
        json.object { json in
            if let agent {
                json.key("agent")
                json.string(agent)
            }
            if let base {
                json.key("base")
                base.write(to: &json)
            }
            json.key("formatVersion")
            json.integer(formatVersion)
            json.key("generation")
            json.integer(generation)
            if let identityHold {
                json.key("identityHold")
                json.object { json in
                    json.key("since")
                    json.date(identityHold.since)
                    json.key("snapshot")
                    identityHold.snapshot.write(to: &json)
                }
            }
            if let latest {
                json.key("latest")
                latest.write(to: &json)
            }
            if let latestKind {
                json.key("latestKind")
                json.string(latestKind.rawValue)
            }
            json.key("owner")
            json.string(owner)
            if let released {
                json.key("released")
                json.object { json in
                    json.key("at")
                    json.date(released.at)
                    if let snapshot = released.snapshot {
                        json.key("snapshot")
                        snapshot.write(to: &json)
                    }
                }
            }
            if let session {
                json.key("session")
                json.string(session)
            }
            json.key("updatedAt")
            json.date(updatedAt)
        }
        return json.bytes
    }
}
