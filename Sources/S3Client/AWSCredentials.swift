/// An access key pair, with the session token that temporary credentials carry.
///
/// Every textual form (`description`, `debugDescription`, `dump`, string interpolation) shows
/// the access key ID, which identifies but does not authorise, and redacts the secret and token.
public struct AWSCredentials: Sendable {
    public let accessKeyID: String
    public let secretAccessKey: String
    public let sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }
}

extension AWSCredentials: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    private static let redacted = "<redacted>"

    public var description: String {
        let token = sessionToken == nil ? "none" : Self.redacted
        return "AWSCredentials(accessKeyID: \(accessKeyID), secretAccessKey: \(Self.redacted), sessionToken: \(token))"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(self, children: [
            "accessKeyID": accessKeyID,
            "secretAccessKey": Self.redacted,
            "sessionToken": sessionToken == nil ? "none" : Self.redacted,
        ])
    }
}
