import Foundation
@testable import SyncEngine
import Testing
import TestSupport

/// `JSONSyntax` stands in for `JSONDecoder` on the files a snapshot reads: it must accept every
/// Baileys file whole, refuse every torn one, and never accept what `JSONDecoder` refuses (what it
/// refuses, `JSONDecoder` is asked about).
@Suite("JSONSyntax")
struct JSONSyntaxTests {
    private struct AnyJSONValue: Decodable {
        init(from decoder: any Decoder) throws {}
    }

    func ours(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes(JSONSyntax.isValid) }

    func foundations(_ bytes: [UInt8]) -> Bool { (try? JSONDecoder().decode(AnyJSONValue.self, from: Data(bytes))) != nil }

    static func baileysFiles() throws -> [[UInt8]] {
        let directory = Fixtures.path("sessions/baileys-registered")
        return try FileManager.default.contentsOfDirectory(atPath: directory).sorted().filter { $0.hasSuffix(".json") }
            .map { [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory + "/" + $0))) }
    }

    /// A random JSON text, mostly of what JSON makes hard: escapes, non-ASCII, number forms, nesting.
    static func document(_ random: inout SplitMix64, depth: Int = 0) -> String {
        let strings = [#""""#, #""a\"b\\c\/d""#, #""\b\f\n\r\t""#, #""\u0041\u00e9\uFFFF""#, "\"é日🙂\u{7f}\"", #""\ud83d\ude00""#]
        let numbers = ["0", "-0", "12", "-3.25", "1e5", "2E-3", "6.02e+23", "1e400", "123456789012345678901234567890"]
        switch Int.random(in: 0..<(depth > 6 ? 3 : 6), using: &random) {
        case 0: return strings.randomElement(using: &random)!
        case 1: return numbers.randomElement(using: &random)!
        case 2: return ["true", "false", "null"].randomElement(using: &random)!
        case 3:
            let members = (0..<Int.random(in: 0...4, using: &random)).map { index in
                "\(strings.randomElement(using: &random)!.dropLast())\(index)\" : \(document(&random, depth: depth + 1))"
            }
            return "{" + members.joined(separator: ",") + "}"
        default:
            let elements = (0..<Int.random(in: 0...4, using: &random)).map { _ in document(&random, depth: depth + 1) }
            return "[ " + elements.joined(separator: ",\n") + " ]"
        }
    }

    @Test func acceptsBaileysFilesWholeAndRefusesEveryTruncation() throws {
        let files = try Self.baileysFiles()
        #expect(files.count > 10)
        for file in files {
            #expect(ours(file))
            // A torn file is a prefix; a prefix of one JSON object is never one.
            for length in stride(from: 0, to: file.count, by: max(1, file.count / 200)) where length < file.count {
                #expect(!ours(Array(file[..<length])))
            }
        }
    }

    @Test func acceptsOnlyWhatJSONDecoderAccepts() throws {
        var random = SplitMix64(seed: 0x15_0)
        let pieces = [
            " ", "\t", "\u{c}", "\\", "\"", "\\u", "\\ud800", "\\x", "-", "+", "0", "01", ".", "e", ",", ":", "]", "}", "[", "{",
            "nul", "truex", "\u{feff}", "\u{1}",
        ].map { Array($0.utf8) } + [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]
        var documents = try Self.baileysFiles()
        for _ in 0..<300 { documents.append(Array(Self.document(&random).utf8)) }
        var accepted = 0
        var compared = 0
        for document in documents {
            // Whole, what JSONDecoder accepts is mostly accepted here too (the fast path is the usual path).
            if ours(document) {
                #expect(foundations(document), "\(String(decoding: document, as: UTF8.self))")
                accepted += 1
            }
            for _ in 0..<30 {
                var bytes = document
                for _ in 0..<Int.random(in: 1...2, using: &random) {
                    let at = Int.random(in: 0...bytes.count, using: &random)
                    switch Int.random(in: 0..<4, using: &random) {
                    case 0 where at < bytes.count: bytes.remove(at: at)
                    case 1 where at < bytes.count: bytes[at] = .random(in: 0...255, using: &random)
                    case 2: bytes.removeSubrange(at...)
                    default: bytes.insert(contentsOf: pieces.randomElement(using: &random)!, at: at)
                    }
                }
                guard ours(bytes) else { continue }
                compared += 1
                #expect(foundations(bytes), "\(String(decoding: bytes, as: UTF8.self))")
            }
        }
        #expect(accepted > documents.count * 3 / 4)
        #expect(compared > 400)

        // Nesting: up to its limit here, deeper left to JSONDecoder.
        let deep = { (depth: Int) in Array((String(repeating: "[", count: depth) + String(repeating: "]", count: depth)).utf8) }
        #expect(ours(deep(JSONSyntax.maxDepth)))
        #expect(!ours(deep(JSONSyntax.maxDepth + 1)))
        #expect(foundations(deep(JSONSyntax.maxDepth)))
    }
}
