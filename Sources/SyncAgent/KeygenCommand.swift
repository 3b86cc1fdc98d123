import ArgumentParser
import SessionCrypto

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Print a new random encryption key (base64) for SESSION_ENCRYPTION_KEY or a key file.")

    func run() {
        print(EncryptionKey.generate().base64EncodedString())
    }
}
