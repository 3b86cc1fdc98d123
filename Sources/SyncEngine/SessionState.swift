import Glibc
import SystemSupport

/// The full set of files of a session at one point: name → record, in the byte order of the
/// names (FORMAT.md's order for the state digest).
///
/// The sidecar keeps one per session it watches, between uploads: tens of thousands of files in
/// all. As a `[String: FileRecord]` a file cost about 290 bytes (a hash table kept at most 3/4
/// full, and a heap object for every name over 15 bytes); here it costs its record, the end of
/// its name and the name's bytes, all in two arrays (about 120 bytes for Baileys' names). Kept
/// sorted, the digest every upload records needs no sort, and a lookup is a binary search.
public struct SessionState: Sendable, Sequence {
    private struct Entry {
        var record: FileRecord
        /// Where the name ends in `nameBytes`; it starts where the previous entry's ends.
        var nameEnd: UInt32
    }

    private var entries: [Entry] = []
    private var nameBytes: [UInt8] = []
    /// The sum of the files' sizes.
    public private(set) var byteCount: Int64 = 0

    public init() {}

    /// A state of `files` (a base manifest's, or a directory's).
    public init(_ files: [String: FileRecord]) {
        self.init(sortedFiles: files.sorted { Self.precedes($0.key, $1.key) }.map { ($0.key, $0.value) })
    }

    /// A state of `files`, which must be sorted by `precedes` and name each file once.
    init(sortedFiles files: [(name: String, record: FileRecord)]) {
        reserveCapacity(files.count, nameBytes: files.reduce(0) { $0 + $1.name.utf8.count })
        for (name, record) in files { append(name.utf8, record) }
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    public subscript(name: String) -> FileRecord? {
        var name = name
        return name.withUTF8 { key in index(of: key).map { entries[$0].record } }
    }

    /// Every name, in order.
    public var names: [String] { entries.indices.map(name(at:)) }

    /// Whether `name` sorts after every name here, so that appending it keeps the order.
    private func isAfterLast(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        entries.isEmpty || nameBuffer(at: entries.count - 1) { Self.compare($0, name) < 0 }
    }

    /// The names below `directory` ("directory/…"), in order.
    func names(inDirectory directory: String) -> [String] {
        var prefix = directory + "/"
        return prefix.withUTF8 { prefix in
            var names: [String] = []
            var index = lowerBound(prefix)
            while index < entries.count, nameBuffer(at: index, { $0.starts(with: prefix) }) {
                names.append(name(at: index))
                index += 1
            }
            return names
        }
    }

    /// How many names at the top level (no "/") start with `prefix`: adjacent in name order, so
    /// counted without building a name (a count at each commit of a session of 100,000 files).
    func topLevelCount(withPrefix prefix: String) -> Int {
        var prefix = prefix
        return prefix.withUTF8 { prefix in
            var count = 0
            var index = lowerBound(prefix)
            while index < entries.count, nameBuffer(at: index, { $0.starts(with: prefix) }) {
                if nameBuffer(at: index, { !$0.contains(UInt8(ascii: "/")) }) { count += 1 }
                index += 1
            }
            return count
        }
    }

    /// The names this state has and `other` has not, in order.
    func names(absentFrom other: SessionState) -> [String] {
        var absent: [String] = []
        var otherIndex = 0
        for index in entries.indices {
            let found = nameBuffer(at: index) { name in
                while otherIndex < other.count, other.nameBuffer(at: otherIndex, { Self.compare($0, name) }) < 0 {
                    otherIndex += 1
                }
                return otherIndex < other.count && other.nameBuffer(at: otherIndex, { Self.compare($0, name) }) == 0
            }
            if !found { absent.append(name(at: index)) }
        }
        return absent
    }

    /// This state with `changes` made: each name set to its record, or removed where it is nil;
    /// of several changes to one name, the last. Names are told apart by their bytes (a
    /// dictionary would take two canonically equivalent names, two files on Linux, for one).
    public func applying(_ changes: [(name: String, record: FileRecord?)]) -> SessionState {
        // By name, and a name's changes in the order given.
        let order = changes.indices.sorted { first, second in
            Self.precedes(changes[first].name, changes[second].name)
                || (!Self.precedes(changes[second].name, changes[first].name) && first < second)
        }
        var result = SessionState()
        result.reserveCapacity(count + changes.count, nameBytes: nameBytes.count + changes.reduce(0) { $0 + $1.name.utf8.count })
        // The files between two changed names are copied a run at a time (one copy of their
        // names' bytes, no comparison per file): an upload changing one file of 100,000 costs
        // two binary searches and two copies, not 100,000 comparisons and appends.
        var byteCount = byteCount
        var index = 0
        for (position, change) in order.enumerated() {
            // A later change to the same name follows: it wins.
            if position + 1 < order.count, !Self.precedes(changes[change].name, changes[order[position + 1]].name) { continue }
            var name = changes[change].name
            let record = changes[change].record
            name.withUTF8 { key in
                let found = lowerBound(key, from: index)
                result.append(entriesIn: index..<found, of: self)
                index = found
                if index < entries.count, nameBuffer(at: index, { Self.compare($0, key) }) == 0 {
                    byteCount -= entries[index].record.size
                    index += 1
                }
                if let record {
                    result.append(key, record)
                    byteCount += record.size
                }
            }
        }
        result.append(entriesIn: index..<entries.count, of: self)
        result.byteCount = byteCount
        return result
    }

    /// SHA-256 (hex) over every file's `name ‖ 0x00 ‖ decimal size ‖ 0x00 ‖ hex content id ‖ "\n"`,
    /// in name order (FORMAT.md): two directories with the same names and contents have the same
    /// digest, whatever their fingerprints.
    public var digest: String {
        let digest = StreamingDigest(.sha256)
        // Every upload digests every file of its session: the lines go into one reused buffer,
        // hashed a chunk at a time (one call into OpenSSL per line cost as much as the hashing).
        let chunkSize = 64 * 1024
        var chunk: [UInt8] = []
        chunk.reserveCapacity(chunkSize + 1024)
        for index in entries.indices {
            let record = entries[index].record
            nameBuffer(at: index) { chunk.append(contentsOf: $0) }
            chunk.append(0)
            Self.appendDecimal(record.size, to: &chunk)
            chunk.append(0)
            record.contentID.appendHex(to: &chunk)
            chunk.append(UInt8(ascii: "\n"))
            if chunk.count >= chunkSize {
                digest.update(chunk)
                chunk.removeAll(keepingCapacity: true)
            }
        }
        digest.update(chunk)
        return digest.finalize().lowercaseHex
    }

    /// `value` in decimal ASCII digits, as `String(value)` spells it (a size read from a damaged
    /// manifest may be negative), without the String.
    private static func appendDecimal(_ value: Int64, to bytes: inout [UInt8]) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { digits in
            if value < 0 { bytes.append(UInt8(ascii: "-")) }
            var remaining = value.magnitude
            var start = digits.count
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
            } while remaining > 0
            bytes.append(contentsOf: digits[start...])
        }
    }

    /// The order of names in a state: by their UTF-8 bytes.
    static func precedes(_ first: String, _ second: String) -> Bool {
        var (first, second) = (first, second)
        return first.withUTF8 { first in second.withUTF8 { second in compare(first, second) < 0 } }
    }

    /// Builds a state from files given one at a time: in place while they come in order (as a
    /// snapshot's writer stores them), through a dictionary once one does not. A base manifest
    /// of 100,000 files then never costs a dictionary of them. The dictionary is keyed by a
    /// name's bytes: String keys would take two canonically equivalent names for one.
    struct Builder {
        private var state = SessionState()
        private var unordered: [[UInt8]: (name: String, record: FileRecord)]?

        init() {}

        /// False, and nothing added, when the state already has `name`.
        mutating func add(_ name: String, _ record: FileRecord) -> Bool {
            if unordered == nil {
                var key = name
                let appended = key.withUTF8 { key in
                    guard state.isAfterLast(key) else { return false }
                    state.append(key, record)
                    return true
                }
                if appended { return true }
                unordered = Dictionary(uniqueKeysWithValues: state.lazy.map { (Array($0.name.utf8), ($0.name, $0.record)) })
                state = SessionState()
            }
            guard unordered![Array(name.utf8)] == nil else { return false }
            unordered![Array(name.utf8)] = (name, record)
            return true
        }

        var count: Int { unordered?.count ?? state.count }

        func build() -> SessionState {
            unordered.map { SessionState(sortedFiles: $0.values.sorted { SessionState.precedes($0.name, $1.name) }) } ?? state
        }
    }

    // MARK: - Storage

    private mutating func reserveCapacity(_ count: Int, nameBytes byteCount: Int) {
        entries.reserveCapacity(count)
        nameBytes.reserveCapacity(byteCount)
    }

    private mutating func append(_ name: some Collection<UInt8>, _ record: FileRecord) {
        nameBytes.append(contentsOf: name)
        entries.append(Entry(record: record, nameEnd: UInt32(nameBytes.count)))
        byteCount += record.size
    }

    /// Appends `other`'s entries in `range`, leaving `byteCount` to the caller.
    private mutating func append(entriesIn range: Range<Int>, of other: SessionState) {
        guard !range.isEmpty else { return }
        let start = range.lowerBound == 0 ? 0 : Int(other.entries[range.lowerBound - 1].nameEnd)
        let end = Int(other.entries[range.upperBound - 1].nameEnd)
        // Where the run's names start here, less where they started there.
        let shift = Int64(nameBytes.count) - Int64(start)
        nameBytes.append(contentsOf: other.nameBytes[start..<end])
        entries.append(contentsOf: other.entries[range].lazy.map {
            Entry(record: $0.record, nameEnd: UInt32(Int64($0.nameEnd) + shift))
        })
    }

    private func nameBuffer<Result>(at index: Int, _ body: (UnsafeBufferPointer<UInt8>) throws -> Result) rethrows -> Result {
        let start = index == 0 ? 0 : Int(entries[index - 1].nameEnd)
        return try nameBytes.withUnsafeBufferPointer { bytes in
            try body(UnsafeBufferPointer(rebasing: bytes[start..<Int(entries[index].nameEnd)]))
        }
    }

    private func name(at index: Int) -> String {
        nameBuffer(at: index) { String(decoding: $0, as: UTF8.self) }
    }

    private func index(of key: UnsafeBufferPointer<UInt8>) -> Int? {
        let index = lowerBound(key)
        guard index < entries.count, nameBuffer(at: index, { Self.compare($0, key) }) == 0 else { return nil }
        return index
    }

    /// The first entry from `start` on whose name is not before `key`.
    private func lowerBound(_ key: UnsafeBufferPointer<UInt8>, from start: Int = 0) -> Int {
        var (low, high) = (start, entries.count)
        while low < high {
            let middle = (low + high) / 2
            if nameBuffer(at: middle, { Self.compare($0, key) }) < 0 { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private static func compare(_ first: UnsafeBufferPointer<UInt8>, _ second: UnsafeBufferPointer<UInt8>) -> Int32 {
        let common = Swift.min(first.count, second.count)
        if common > 0, let firstStart = first.baseAddress, let secondStart = second.baseAddress {
            let order = memcmp(firstStart, secondStart, common)
            if order != 0 { return order }
        }
        return first.count == second.count ? 0 : (first.count < second.count ? -1 : 1)
    }
}

extension SessionState {
    /// The files in name order.
    public struct Iterator: IteratorProtocol {
        fileprivate let state: SessionState
        fileprivate var index = 0

        public mutating func next() -> (name: String, record: FileRecord)? {
            guard index < state.count else { return nil }
            defer { index += 1 }
            return (state.name(at: index), state.entries[index].record)
        }
    }

    public func makeIterator() -> Iterator { Iterator(state: self) }
    public var underestimatedCount: Int { count }
}
