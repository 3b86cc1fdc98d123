import Foundation

/// `creds.json` as Baileys' `useMultiFileAuthState` writes it (`BufferJSON`: binary values as
/// `{"type":"Buffer","data":"<base64>"}`), with random keys: a fresh `initAuthCreds()`, or one
/// paired with `phone` (its `me` and `account`). Inline so the tests need no generated fixture.
public enum BaileysFixtures {
    public static func credentials(pairedWith phone: String? = nil) -> String {
        func buffer(_ count: Int) -> String {
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255) }
            return #"{"type":"Buffer","data":"\#(Data(bytes).base64EncodedString())"}"#
        }
        func keyPair() -> String { #"{"private":\#(buffer(32)),"public":\#(buffer(32))}"# }
        var fields = [
            #""noiseKey":\#(keyPair())"#,
            #""pairingEphemeralKeyPair":\#(keyPair())"#,
            #""signedIdentityKey":\#(keyPair())"#,
            #""signedPreKey":{"keyPair":\#(keyPair()),"signature":\#(buffer(64)),"keyId":1}"#,
            #""registrationId":\#(Int.random(in: 1...16380))"#,
            #""advSecretKey":"\#(Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString())""#,
            #""processedHistoryMessages":[]"#, #""nextPreKeyId":31"#, #""firstUnuploadedPreKeyId":31"#,
            #""accountSyncCounter":0"#, #""accountSettings":{"unarchiveChats":false}"#,
            #""registered":false"#,
        ]
        if let phone {
            fields += [
                #""me":{"id":"\#(phone):12@s.whatsapp.net","name":"Test","lid":"1234567890:12@lid"}"#,
                #""account":{"details":\#(buffer(40)),"accountSignatureKey":\#(buffer(32)),"accountSignature":\#(buffer(64)),"deviceSignature":\#(buffer(64))}"#,
                #""platform":"smba""#,
            ]
        }
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// A few key files beside `creds.json`, named as Baileys names them.
    public static let keyFiles: [String: String] = [
        "pre-key-1.json": #"{"private":{"type":"Buffer","data":"AAAA"},"public":{"type":"Buffer","data":"AAAA"}}"#,
        "pre-key-2.json": #"{"private":{"type":"Buffer","data":"AAAA"},"public":{"type":"Buffer","data":"AAAA"}}"#,
        "session-4915100000000.0.json": #"{"_sessions":{}}"#,
        "app-state-sync-version-critical_block.json": #"{"version":1}"#,
    ]
}
