import Foundation

/// The repository's fixtures/ directory: sample sessions and hostile snapshot payloads.
public enum Fixtures {
    public static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures").path
    public static let sessionNames = ["small", "medium"]

    public static func path(_ relative: String) -> String {
        root + "/" + relative
    }

    public static func session(_ name: String) -> String {
        path("sessions/\(name)")
    }

    public static func hostile(_ name: String) throws -> [UInt8] {
        try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("hostile/\(name)"))))
    }
}

/// Writes files (relative path → contents) into a new directory at `path`.
public func writeTree(_ files: [String: [UInt8]], at path: String) throws {
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    for (relativePath, contents) in files {
        let url = URL(fileURLWithPath: path + "/" + relativePath)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(contents).write(to: url)
    }
}
