import Glibc
import SystemSupport

/// The full set of files of a session at one point: name → record, in the byte order of the
/// names (FORMAT.md's order of manifest lines).
///
/// The sidecar keeps one per session it watches, between uploads: tens of thousands of files in
/// all. As a `[String: FileRecord]` a file cost about 290 bytes (a hash table kept at most 3/4
/// full, and a heap object for every name over 15 bytes); here it costs its record, the end of
/// its name and the name's bytes (about 120 bytes for Baileys' names), in runs of consecutive
/// files of at most `runCapacity`, each run two arrays. A lookup is two binary searches (the run,
/// then the file). A change moves the files of one run, and a copy of the state shares its runs:
/// changing a copy (the writer's new state beside the replicator's previous one) copies the list
/// of runs and the one run it changes. So an upload costs what changed, not the session's size,
/// and so does the state digest of format version 4, which the state keeps once `keepDigest()`
/// computed it.
public struct SessionState: Sendable, Sequence {
    private struct Entry {
        var record: FileRecord
        /// Where the name ends in its run's `nameBytes`; it starts where the previous entry's ends.
        var nameEnd: UInt32
    }

    private struct Run {
        var entries: [Entry] = []
        var nameBytes: [UInt8] = []
        /// How many of its names are below a directory (hold a "/"): `topLevelCount` counts a
        /// whole run without reading its names.
        var nestedCount = 0

        func countNested() -> Int {
            var count = 0
            var start = 0
            for entry in entries {
                if nameBytes[start..<Int(entry.nameEnd)].contains(UInt8(ascii: "/")) { count += 1 }
                start = Int(entry.nameEnd)
            }
            return count
        }
    }

    /// A run splits in two past this many files. Small enough that moving a run's files is cheap
    /// next to an upload, large enough that a session of 100,000 files has a few hundred runs.
    static let runCapacity = 512

    private var runs: [Run] = []
    public private(set) var count = 0
    /// The sum of the files' sizes.
    public private(set) var byteCount: Int64 = 0
    /// The digest of format version 4, kept up to date by every change once `keepDigest()` set it.
    private var keptDigest: StateDigest?

    /// A file's place: its run, and its index in the run. The end is `(runs.count, 0)`.
    fileprivate struct Position: Comparable {
        var run: Int
        var index: Int

        static func < (lhs: Position, rhs: Position) -> Bool { (lhs.run, lhs.index) < (rhs.run, rhs.index) }
    }

    public init() {}

    /// A state of `files` (a base manifest's, or a directory's).
    public init(_ files: [String: FileRecord]) {
        self.init(sortedFiles: files.sorted { Self.precedes($0.key, $1.key) }.map { ($0.key, $0.value) })
    }

    /// A state of `files`, which must be sorted by `precedes` and name each file once.
    init(sortedFiles files: [(name: String, record: FileRecord)]) {
        for (name, record) in files {
            var name = name
            name.withUTF8 { append($0, record) }
        }
    }

    public var isEmpty: Bool { count == 0 }

    public subscript(name: String) -> FileRecord? {
        var name = name
        return name.withUTF8 { key in position(of: key).map { runs[$0.run].entries[$0.index].record } }
    }

    /// Every name, in order.
    public var names: [String] { map(\.name) }

    /// Whether `name` sorts after every name here, so that appending it keeps the order.
    private func isAfterLast(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let last = runs.indices.last else { return true }
        return nameBuffer(at: Position(run: last, index: runs[last].entries.count - 1)) { Self.compare($0, name) < 0 }
    }

    /// The names below `directory` ("directory/…"), in order.
    func names(inDirectory directory: String) -> [String] {
        var prefix = directory + "/"
        return prefix.withUTF8 { prefix in
            var names: [String] = []
            var position = lowerBound(prefix)
            while position.run < runs.count, nameBuffer(at: position, { $0.starts(with: prefix) }) {
                names.append(name(at: position))
                position = after(position)
            }
            return names
        }
    }

    /// How many names at the top level (no "/") start with `prefix`: adjacent in name order, so
    /// counted by the runs between the first and the last of them, the names read only in the
    /// runs at the two ends (a count at each commit of a session of 100,000 files).
    func topLevelCount(withPrefix prefix: String) -> Int {
        var prefix = prefix
        return prefix.withUTF8 { prefix in
            var position = lowerBound(prefix)
            let end = Self.successor(of: prefix).map { $0.withUnsafeBufferPointer { lowerBound($0) } } ?? endPosition
            var count = 0
            while position < end {
                if position.index == 0, position.run < end.run {
                    count += runs[position.run].entries.count - runs[position.run].nestedCount
                    position = Position(run: position.run + 1, index: 0)
                } else {
                    if nameBuffer(at: position, { !$0.contains(UInt8(ascii: "/")) }) { count += 1 }
                    position = after(position)
                }
            }
            return count
        }
    }

    /// The names this state has and `other` has not, in order.
    func names(absentFrom other: SessionState) -> [String] {
        var absent: [String] = []
        var otherPosition = Position(run: 0, index: 0)
        var position = Position(run: 0, index: 0)
        while position.run < runs.count {
            let found = nameBuffer(at: position) { name in
                while otherPosition.run < other.runs.count, other.nameBuffer(at: otherPosition, { Self.compare($0, name) }) < 0 {
                    otherPosition = other.after(otherPosition)
                }
                return otherPosition.run < other.runs.count && other.nameBuffer(at: otherPosition, { Self.compare($0, name) }) == 0
            }
            if !found { absent.append(name(at: position)) }
            position = after(position)
        }
        return absent
    }

    /// This state with `changes` made, in order: each name set to its record, or removed where it
    /// is nil (of several changes to one name, the last stands). Names are told apart by their
    /// bytes (a dictionary would take two canonically equivalent names, two files on Linux, for one).
    public func applying(_ changes: [(name: String, record: FileRecord?)]) -> SessionState {
        var result = self
        for (name, record) in changes { result.set(name, record) }
        return result
    }

    /// Sets `name`'s record, or removes it (nil): two binary searches and a move within one run.
    mutating func set(_ name: String, _ record: FileRecord?) {
        var name = name
        name.withUTF8 { key in
            let position = lowerBound(key)
            let found = position.run < runs.count && nameBuffer(at: position, { Self.compare($0, key) }) == 0
            let hasher = keptDigest == nil ? nil : LineHasher()
            if found {
                let previous = runs[position.run].entries[position.index].record
                byteCount -= previous.size
                if let hasher { keptDigest!.subtract(hasher.hash(key, previous)) }
                if let record {
                    runs[position.run].entries[position.index].record = record
                } else {
                    remove(at: position, nameLength: key.count, nested: key.contains(UInt8(ascii: "/")))
                }
            } else if let record {
                insert(key, record, at: position)
            }
            if let record {
                byteCount += record.size
                if let hasher { keptDigest!.add(hasher.hash(key, record)) }
            }
        }
    }

    /// Keeps the digest of format version 4 from now on: computed here once (every file's line
    /// hashed), then updated by each change. A state that keeps it gives `digest(formatVersion: 4)`
    /// at once; the writer's new state, made from its previous one, keeps it too.
    public mutating func keepDigest() {
        if keptDigest == nil { keptDigest = computedDigest() }
    }

    var keepsDigest: Bool { keptDigest != nil }

    /// FORMAT.md's `stateDigest` of this state, by the rule of a manifest of `formatVersion`: two
    /// directories with the same names, sizes and content ids have the same digest, whatever
    /// their fingerprints.
    public func digest(formatVersion: Int) -> String {
        formatVersion >= 4 ? (keptDigest ?? computedDigest()).hex : hashOfLines()
    }

    private func computedDigest() -> StateDigest {
        let hasher = LineHasher()
        var digest = StateDigest.empty
        var position = Position(run: 0, index: 0)
        while position.run < runs.count {
            let record = runs[position.run].entries[position.index].record
            nameBuffer(at: position) { digest.add(hasher.hash($0, record)) }
            position = after(position)
        }
        return digest
    }

    /// Versions 2 and 3: SHA-256 (hex) over every file's line and "\n", in name order.
    private func hashOfLines() -> String {
        let digest = StreamingDigest(.sha256)
        // Every line goes into one reused buffer, hashed a chunk at a time (one call into
        // OpenSSL per line cost as much as the hashing).
        let chunkSize = 64 * 1024
        var chunk: [UInt8] = []
        chunk.reserveCapacity(chunkSize + 1024)
        var position = Position(run: 0, index: 0)
        while position.run < runs.count {
            let record = runs[position.run].entries[position.index].record
            nameBuffer(at: position) { LineHasher.appendLine($0, record, to: &chunk) }
            chunk.append(UInt8(ascii: "\n"))
            if chunk.count >= chunkSize {
                digest.update(chunk)
                chunk.removeAll(keepingCapacity: true)
            }
            position = after(position)
        }
        digest.update(chunk)
        return digest.finalize().lowercaseHex
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
        private var unordered: [NameKey: (name: String, record: FileRecord)]?

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
                unordered = Dictionary(uniqueKeysWithValues: state.lazy.map { (NameKey($0.name), ($0.name, $0.record)) })
                state = SessionState()
            }
            let key = NameKey(name)
            guard unordered![key] == nil else { return false }
            unordered![key] = (name, record)
            return true
        }

        var count: Int { unordered?.count ?? state.count }

        func build() -> SessionState {
            unordered.map { SessionState(sortedFiles: $0.values.sorted { SessionState.precedes($0.name, $1.name) }) } ?? state
        }
    }

    // MARK: - Storage

    /// Appends a name after every name here (the caller keeps the order), filling the last run:
    /// how a state is built, before it keeps a digest.
    private mutating func append(_ name: UnsafeBufferPointer<UInt8>, _ record: FileRecord) {
        precondition(keptDigest == nil, "a state is built before it keeps its digest")
        if runs.last.map({ $0.entries.count >= Self.runCapacity }) ?? true { runs.append(Run()) }
        // At the end of the last run: nothing after it to move (a restore builds every base this way).
        let last = runs.count - 1
        runs[last].nameBytes.append(contentsOf: name)
        runs[last].entries.append(Entry(record: record, nameEnd: UInt32(runs[last].nameBytes.count)))
        if name.contains(UInt8(ascii: "/")) { runs[last].nestedCount += 1 }
        count += 1
        byteCount += record.size
    }

    /// Inserts a name that is not here at `position` (where `lowerBound` puts it), splitting a
    /// run grown past `runCapacity`; `byteCount` and the digest are the caller's.
    private mutating func insert(_ name: UnsafeBufferPointer<UInt8>, _ record: FileRecord, at position: Position) {
        var position = position
        if runs.isEmpty { runs.append(Run()) }
        if position.run == runs.count {
            // After every name: at the end of the last run.
            position = Position(run: runs.count - 1, index: runs[runs.count - 1].entries.count)
        }
        let start = nameStart(at: position)
        let nameLength = UInt32(name.count)
        runs[position.run].nameBytes.insert(contentsOf: name, at: start)
        runs[position.run].entries.insert(Entry(record: record, nameEnd: UInt32(start) + nameLength), at: position.index)
        runs[position.run].entries.withUnsafeMutableBufferPointer { entries in
            for index in (position.index + 1)..<entries.count { entries[index].nameEnd += nameLength }
        }
        if name.contains(UInt8(ascii: "/")) { runs[position.run].nestedCount += 1 }
        count += 1
        if runs[position.run].entries.count > Self.runCapacity { split(position.run) }
    }

    private mutating func remove(at position: Position, nameLength: Int, nested: Bool) {
        let start = nameStart(at: position)
        runs[position.run].nameBytes.removeSubrange(start..<(start + nameLength))
        runs[position.run].entries.remove(at: position.index)
        runs[position.run].entries.withUnsafeMutableBufferPointer { entries in
            for index in position.index..<entries.count { entries[index].nameEnd -= UInt32(nameLength) }
        }
        if nested { runs[position.run].nestedCount -= 1 }
        count -= 1
        if runs[position.run].entries.isEmpty { runs.remove(at: position.run) }
    }

    /// Moves the second half of a run into a new run after it.
    private mutating func split(_ run: Int) {
        let half = runs[run].entries.count / 2
        let cut = Int(runs[run].entries[half - 1].nameEnd)
        var second = Run()
        second.nameBytes = Array(runs[run].nameBytes[cut...])
        second.entries = runs[run].entries[half...].map { Entry(record: $0.record, nameEnd: $0.nameEnd - UInt32(cut)) }
        runs[run].nameBytes.removeSubrange(cut...)
        runs[run].entries.removeSubrange(half...)
        runs.insert(second, at: run + 1)
        for index in [run, run + 1] { runs[index].nestedCount = runs[index].countNested() }
    }

    private var endPosition: Position { Position(run: runs.count, index: 0) }

    private func after(_ position: Position) -> Position {
        position.index + 1 < runs[position.run].entries.count
            ? Position(run: position.run, index: position.index + 1) : Position(run: position.run + 1, index: 0)
    }

    private func nameStart(at position: Position) -> Int {
        position.index == 0 ? 0 : Int(runs[position.run].entries[position.index - 1].nameEnd)
    }

    private func nameBuffer<Result>(at position: Position, _ body: (UnsafeBufferPointer<UInt8>) throws -> Result) rethrows -> Result {
        let start = nameStart(at: position)
        let end = Int(runs[position.run].entries[position.index].nameEnd)
        return try runs[position.run].nameBytes.withUnsafeBufferPointer { bytes in
            try body(UnsafeBufferPointer(rebasing: bytes[start..<end]))
        }
    }

    private func name(at position: Position) -> String {
        nameBuffer(at: position) { String(decoding: $0, as: UTF8.self) }
    }

    private func position(of key: UnsafeBufferPointer<UInt8>) -> Position? {
        let position = lowerBound(key)
        guard position.run < runs.count, nameBuffer(at: position, { Self.compare($0, key) }) == 0 else { return nil }
        return position
    }

    /// The first file whose name is not before `key`: the first run whose last name is not
    /// before it, then the file in that run.
    private func lowerBound(_ key: UnsafeBufferPointer<UInt8>) -> Position {
        var (low, high) = (0, runs.count)
        while low < high {
            let middle = (low + high) / 2
            let last = Position(run: middle, index: runs[middle].entries.count - 1)
            if nameBuffer(at: last, { Self.compare($0, key) }) < 0 { low = middle + 1 } else { high = middle }
        }
        guard low < runs.count else { return endPosition }
        var (first, end) = (0, runs[low].entries.count)
        while first < end {
            let middle = (first + end) / 2
            if nameBuffer(at: Position(run: low, index: middle), { Self.compare($0, key) }) < 0 { first = middle + 1 } else { end = middle }
        }
        return Position(run: low, index: first)
    }

    /// The least byte string after every string that starts with `prefix`; nil when there is none
    /// (a prefix of 0xFF bytes only).
    private static func successor(of prefix: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        var bytes = Array(prefix)
        while let last = bytes.last {
            if last < 0xFF {
                bytes[bytes.count - 1] = last + 1
                return bytes
            }
            bytes.removeLast()
        }
        return nil
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
        fileprivate var position = Position(run: 0, index: 0)

        public mutating func next() -> (name: String, record: FileRecord)? {
            guard position.run < state.runs.count else { return nil }
            defer { position = state.after(position) }
            return (state.name(at: position), state.runs[position.run].entries[position.index].record)
        }
    }

    public func makeIterator() -> Iterator { Iterator(state: self) }
    public var underestimatedCount: Int { count }
}
