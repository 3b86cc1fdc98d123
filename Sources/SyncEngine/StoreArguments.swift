/// Checks a listing prefix: empty, or a key that may end with "/" or part way through a
/// component ("sessions/ab" lists "sessions/abc/x"). The same rules as keys, so a prefix can
/// never reach outside a store's root either.
func validatePrefix(_ prefix: String) throws(StoreError) {
    guard !prefix.isEmpty else { return }
    do {
        try validateKey(prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix)
    } catch {
        throw .rejected("invalid listing prefix \"\(prefix)\"")
    }
}

/// Checks a byte range for `get`: it may run past the end (cut there, as HTTP does), but
/// cannot start before the beginning.
func validateRange(_ range: ClosedRange<Int64>?) throws(StoreError) {
    if let range, range.lowerBound < 0 {
        throw .rejected("invalid byte range \(range)")
    }
}

extension Array<StoredObjectInfo> {
    /// In S3's order: by the UTF-8 bytes of the key.
    func sortedByKey() -> [StoredObjectInfo] {
        sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
    }
}
