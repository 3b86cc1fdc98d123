import Foundation
import Glibc
import Testing

// Session files as the tests write and compare them.

/// Every file under `root` (relative path → bytes), directories as "path/".
public func directoryTree(_ root: String) throws -> [String: [UInt8]] {
    var files: [String: [UInt8]] = [:]
    for name in try entryNames(root) {
        files[name] = name.hasSuffix("/") ? [] : try readBytes("\(root)/\(name)")
    }
    return files
}

/// The relative paths of everything under `root`, directories ending in "/".
private func entryNames(_ root: String) throws -> [String] {
    guard let enumerator = FileManager.default.enumerator(atPath: root) else { throw ProgramFailure("cannot list \(root)") }
    var names: [String] = []
    while let name = enumerator.nextObject() as? String {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: "\(root)/\(name)", isDirectory: &isDirectory)
        names.append(isDirectory.boolValue ? name + "/" : name)
    }
    return names
}

public func expectSameTree(_ actual: String, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let actualTree = try directoryTree(actual)
    let expectedTree = try directoryTree(expected)
    #expect(actualTree.keys.sorted() == expectedTree.keys.sorted(), sourceLocation: sourceLocation)
    for (name, bytes) in expectedTree where actualTree[name] != nil {
        #expect(actualTree[name] == bytes, "\(name) differs", sourceLocation: sourceLocation)
    }
}

/// The permission bits of everything under `root`, named as `directoryTree` names them.
public func modes(_ root: String) throws -> [String: Int] {
    var modes: [String: Int] = [:]
    for name in try entryNames(root) {
        guard let mode = try FileManager.default.attributesOfItem(atPath: "\(root)/\(name)")[.posixPermissions] as? Int else {
            throw ProgramFailure("no mode for \(root)/\(name)")
        }
        modes[name] = mode
    }
    return modes
}

/// Restored session files are 0600 and their directories 0700.
public func expectPrivateModes(_ root: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    for (name, mode) in try modes(root) {
        #expect(mode == (name.hasSuffix("/") ? 0o700 : 0o600), "\(name) is \(String(mode, radix: 8))", sourceLocation: sourceLocation)
    }
}

public func sortedFiles(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
}

public func readBytes(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw ProgramFailure("cannot read \(path)") }
    return [UInt8](data)
}

/// Rewrites in place as Baileys does (open with O_TRUNC, write, close; no rename, no fsync).
public func write(_ text: String, to path: String) throws {
    try write(bytes: Array(text.utf8), to: path)
}

public func write(bytes: [UInt8], to path: String) throws {
    try writeRaw(bytes[...], to: path, flags: O_TRUNC)
}

public func writeRaw(_ bytes: ArraySlice<UInt8>, to path: String, flags: Int32) throws {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0o644)
    guard descriptor >= 0 else { throw ProgramFailure("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    try writeAll(descriptor, bytes)
}

public func writeAll(_ descriptor: Int32, _ bytes: ArraySlice<UInt8>) throws {
    var rest = bytes
    while !rest.isEmpty {
        let written = rest.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written > 0 else { throw ProgramFailure("write failed: \(String(cString: strerror(errno)))") }
        rest = rest.dropFirst(written)
    }
}
