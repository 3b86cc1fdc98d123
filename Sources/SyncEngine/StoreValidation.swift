/// Checks a listing prefix, which may end part way through a name ("sessions/ab" lists
/// "sessions/abc/x"), and splits it at its last "/": the directory, whole components that
/// follow the key rules (so a prefix never reaches outside a store's root), and the start of
/// the names to list in it, which only filters.
@discardableResult
package func validatePrefix(_ prefix: String) throws(StoreError) -> (directory: String, namePrefix: String) {
    guard !prefix.contains("\0") else { throw .rejected("invalid listing prefix \"\(prefix)\"") }
    guard let slash = prefix.utf8.lastIndex(of: UInt8(ascii: "/")) else { return ("", prefix) }
    let directory = String(decoding: prefix.utf8[..<slash], as: UTF8.self)
    do {
        try validateKey(directory)
    } catch {
        throw .rejected("invalid listing prefix \"\(prefix)\"")
    }
    return (directory, String(decoding: prefix.utf8[prefix.utf8.index(after: slash)...], as: UTF8.self))
}

extension Array<StoredObjectInfo> {
    /// In S3's order: by the UTF-8 bytes of the key.
    package func sortedByKey() -> [StoredObjectInfo] {
        sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
    }
}
