import Crypto

/// Unpacks an archive into a staging directory, and restores a session directory from an archive.
public struct ArchiveExtractor: Sendable {
    public var limits: ExtractionLimits

    public init(limits: ExtractionLimits = .sessionDirectory) {
        self.limits = limits
    }

    /// Extracts every entry of the archive read from `source` into `staging`. On error the staging
    /// directory may hold part of the archive; `DirectorySwap` removes it.
    public func extract(from source: ByteSource, into staging: StagingDirectory) throws {
        let reader = try ArchiveReader(source: source, limits: limits)
        try reader.forEachEntry { entry, data in
            switch entry.kind {
            case .directory:
                try staging.makeDirectory(relativePath: entry.path)
            case .file:
                try staging.writeFile(relativePath: entry.path) { sink in
                    try data.copy(to: sink)
                }
            }
        }
    }

    /// Replaces the directory `target` by the archive's contents, atomically (see `DirectorySwap`).
    /// Any refused entry, limit, truncation or source error leaves `target` untouched.
    public func restore(from source: ByteSource, replacing target: String) throws {
        try DirectorySwap.replace(target) { staging in
            try extract(from: source, into: staging)
        }
    }
}
