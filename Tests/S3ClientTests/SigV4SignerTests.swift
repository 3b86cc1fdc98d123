import Foundation
import S3Client
import SystemSupport
import Testing

struct SigV4SignerTests {
    private let credentials = AWSCredentials(
        accessKeyID: "AKIDEXAMPLE",
        secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        sessionToken: "session/token+with=specials"
    )
    /// 2013-05-24T00:00:00Z
    private let date = Date(timeIntervalSince1970: 1_369_353_600)

    /// A signer keeps the day's signing key: signing on the next day, the key is that day's,
    /// as a new signer's (and back again).
    @Test func aSignerUsedOverSeveralDaysSignsAsANewOneEachDay() {
        let request = SigV4Request(method: "GET", host: "example.amazonaws.com", path: "/k")
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1")
        for date in [date, date + 86_400, date + 86_400 + 3_600, date] {
            let fresh = SigV4Signer(credentials: credentials, region: "us-east-1")
            #expect(
                signer.signHeaders(request, payload: .empty, date: date).calculation
                    == fresh.signHeaders(request, payload: .empty, date: date).calculation)
        }
    }

    // MARK: - URI encoding

    @Test func unreservedCharactersStayAsTheyAre() {
        let unreserved = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        #expect(SigV4Signer.uriEncode(unreserved, encodeSlash: true) == unreserved)
    }

    @Test func reservedCharactersAreEncodedWithUppercaseHex() {
        #expect(SigV4Signer.uriEncode(" ", encodeSlash: true) == "%20")
        #expect(SigV4Signer.uriEncode("+", encodeSlash: true) == "%2B")
        #expect(SigV4Signer.uriEncode("=", encodeSlash: true) == "%3D")
        #expect(SigV4Signer.uriEncode("*", encodeSlash: true) == "%2A")
        #expect(SigV4Signer.uriEncode("%", encodeSlash: true) == "%25")
        #expect(SigV4Signer.uriEncode("$&,:;?@!'()#[]", encodeSlash: true) == "%24%26%2C%3A%3B%3F%40%21%27%28%29%23%5B%5D")
    }

    @Test func slashIsKeptInPathsAndEncodedElsewhere() {
        #expect(SigV4Signer.uriEncode("/a/b c/", encodeSlash: false) == "/a/b%20c/")
        #expect(SigV4Signer.uriEncode("/a/b c/", encodeSlash: true) == "%2Fa%2Fb%20c%2F")
    }

    @Test func nonASCIIIsEncodedAsUTF8Bytes() {
        #expect(SigV4Signer.uriEncode("é", encodeSlash: true) == "%C3%A9")
        #expect(SigV4Signer.uriEncode("日本", encodeSlash: true) == "%E6%97%A5%E6%9C%AC")
        #expect(SigV4Signer.uriEncode("😀", encodeSlash: true) == "%F0%9F%98%80")
    }

    @Test func requestEncodesItsUnencodedPathOnce() {
        let request = SigV4Request(method: "GET", host: "h", path: "/bucket/some key+é/a%b")
        #expect(request.encodedPath == "/bucket/some%20key%2B%C3%A9/a%25b")
    }

    // MARK: - Canonical parts

    @Test func canonicalQueryStringSortsByEncodedNameThenValue() {
        let query = SigV4Signer.canonicalQueryString([
            (name: "b", value: "2"), (name: "a", value: "z"), (name: "a", value: "y"),
            (name: "list-type", value: "2"), (name: "prefix", value: "dir/sub dir/"), (name: "uploads", value: ""),
        ])
        #expect(query == "a=y&a=z&b=2&list-type=2&prefix=dir%2Fsub%20dir%2F&uploads=")
        #expect(SigV4Signer.canonicalQueryString([]) == "")
    }

    @Test func s3RulesSignThePathExactlyAsSent() {
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1")
        #expect(signer.canonicalURI(encodedPath: "/b/./k//x/../y%20z") == "/b/./k//x/../y%20z")
        #expect(signer.canonicalURI(encodedPath: "") == "/")
    }

    @Test func genericRulesNormaliseAndEncodeThePathAgain() {
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "service", rules: .generic)
        #expect(signer.canonicalURI(encodedPath: "/a/./b//c/../d%20e") == "/a/b/d%2520e")
        #expect(signer.canonicalURI(encodedPath: "/a/b/..") == "/a/")
        #expect(signer.canonicalURI(encodedPath: "/../..") == "/")
    }

    @Test func canonicalHeadersTrimCollapseMergeAndSort() {
        let headers = CanonicalHeaders([
            (name: "X-Amz-Meta-B", value: "  two   words\t "),
            (name: "Host", value: "example.com"),
            (name: "x-amz-meta-b", value: "second"),
            (name: "Content-MD5", value: "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ])
        #expect(headers.canonicalHeaders == "content-md5:1B2M2Y8AsgTpgAmY7PhCfg==\nhost:example.com\nx-amz-meta-b:two words,second\n")
        #expect(headers.signedHeaders == "content-md5;host;x-amz-meta-b")
    }

    @Test func signingKeyMatchesTheAWSDerivationExample() {
        // "Examples of how to derive a signing key for Signature Version 4" (IAM, 2012-02-15).
        let signer = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1",
            service: "iam",
            rules: .generic
        )
        #expect(signer.signingKey(date: Date(timeIntervalSince1970: 1_329_264_000)).lowercaseHex == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d")
    }

    @Test func fractionsOfASecondDoNotChangeTheTimestamp() {
        let signer = SigV4Signer(credentials: credentials, region: "eu-west-1")
        let request = SigV4Request(method: "GET", host: "h", path: "/")
        #expect(signer.signHeaders(request, payload: .empty, date: date.addingTimeInterval(0.999)).headersToAdd.first?.value == "20130524T000000Z")
        #expect(signer.credentialScope(date: date) == "20130524/eu-west-1/s3/aws4_request")
    }

    // MARK: - Payload and session tokens

    @Test func emptyPayloadIsTheHashOfNothing() {
        #expect(SigV4Payload.empty == SigV4Payload.hashing([UInt8]()))
    }

    @Test func unsignedPayloadIsSentAndSignedAsSuch() {
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1")
        let signed = signer.signHeaders(
            SigV4Request(method: "PUT", host: "127.0.0.1:9000", path: "/bucket/key"),
            payload: .unsigned,
            date: date
        )
        #expect(signed.headersToAdd.contains { $0.name == "x-amz-content-sha256" && $0.value == "UNSIGNED-PAYLOAD" })
        #expect(signed.calculation.canonicalRequest.hasSuffix("\nUNSIGNED-PAYLOAD"))
        #expect(signed.calculation.canonicalRequest.contains("\nhost:127.0.0.1:9000\n"))
    }

    @Test func sessionTokenIsASignedHeader() {
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1")
        let signed = signer.signHeaders(SigV4Request(method: "GET", host: "h", path: "/"), payload: .empty, date: date)
        #expect(signed.headersToAdd.map(\.name) == ["x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"])
        #expect(signed.calculation.canonicalRequest.contains("\nx-amz-security-token:session/token+with=specials\n"))
        #expect(signed.headersToAdd.last!.value.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"))
    }

    @Test func sessionTokenIsASignedQueryParameterWhenPresigning() {
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1")
        let request = SigV4Request(
            method: "PUT",
            host: "h",
            path: "/bucket/a key",
            query: [("partNumber", "3"), ("uploadId", "u/1")]
        )
        let presigned = signer.presign(request, expiresIn: 3600, date: date)
        let canonicalQuery = presigned.calculation.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[2]
        #expect(canonicalQuery == "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                + "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=3600"
                + "&X-Amz-Security-Token=session%2Ftoken%2Bwith%3Dspecials&X-Amz-SignedHeaders=host"
                + "&partNumber=3&uploadId=u%2F1")
        #expect(presigned.queryString == "\(canonicalQuery)&X-Amz-Signature=\(presigned.calculation.signature)")
        #expect(presigned.calculation.canonicalRequest.hasPrefix("PUT\n/bucket/a%20key\n"))
    }

    // MARK: - Credentials never show their secrets

    @Test func credentialTextRedactsSecretAndToken() {
        var dumped = ""
        dump(credentials, to: &dumped)
        for text in ["\(credentials)", String(describing: credentials), String(reflecting: credentials), credentials.debugDescription, dumped] {
            #expect(!text.contains(credentials.secretAccessKey), "\(text)")
            #expect(!(text.contains("session/token")), "\(text)")
            #expect(text.contains("AKIDEXAMPLE"), "\(text)")
            #expect(text.contains("<redacted>"), "\(text)")
        }
    }

    @Test func signerTextRedactsTheCredentials() {
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1")
        var dumped = ""
        dump(signer, to: &dumped)
        for text in ["\(signer)", String(reflecting: signer), dumped] {
            #expect(!text.contains(credentials.secretAccessKey), "\(text)")
            #expect(!(text.contains("session/token")), "\(text)")
        }
    }

    @Test func credentialTextSaysWhenThereIsNoToken() {
        let permanent = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "secret-value")
        #expect(permanent.description == "AWSCredentials(accessKeyID: AKIDEXAMPLE, secretAccessKey: <redacted>, sessionToken: none)")
    }
}
