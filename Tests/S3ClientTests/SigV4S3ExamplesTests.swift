import Foundation
import S3Client
import SystemSupport
import Testing

/// The worked examples of the Amazon S3 API reference: "Signature Calculations for the
/// Authorization Header: Transferring Payload in a Single Chunk" and "Authenticating Requests:
/// Using Query Parameters", with the canonical requests, strings to sign and signatures they print.
struct SigV4S3ExamplesTests {
    private let signer = SigV4Signer(
        credentials: AWSCredentials(
            accessKeyID: "AKIAIOSFODNN7EXAMPLE",
            secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ),
        region: "us-east-1"
    )
    private let host = "examplebucket.s3.amazonaws.com"
    /// 2013-05-24T00:00:00Z
    private let date = Date(timeIntervalSince1970: 1_369_353_600)
    private let emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    @Test func getObjectWithRange() {
        let request = SigV4Request(method: "GET", host: host, path: "/test.txt", headers: [(name: "Range", value: "bytes=0-9")])
        let signed = signer.signHeaders(request, payload: .empty, date: date)

        #expect(signed.calculation.canonicalRequest == """
            GET
            /test.txt

            host:examplebucket.s3.amazonaws.com
            range:bytes=0-9
            x-amz-content-sha256:\(emptyHash)
            x-amz-date:20130524T000000Z

            host;range;x-amz-content-sha256;x-amz-date
            \(emptyHash)
            """)
        #expect(signed.calculation.stringToSign == """
            AWS4-HMAC-SHA256
            20130524T000000Z
            20130524/us-east-1/s3/aws4_request
            7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972
            """)
        #expect(signed.calculation.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signed.headersToAdd.map(\.name) == ["x-amz-date", "x-amz-content-sha256", "authorization"])
        #expect(signed.headersToAdd.last?.value == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func putObjectWithBodyAndStorageClass() {
        let body = Array("Welcome to Amazon S3.".utf8)
        let payload = SigV4Payload.hashing(body)
        #expect(payload == .sha256(hex: "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"))
        let request = SigV4Request(
            method: "PUT",
            host: host,
            path: "/test$file.text",
            headers: [
                (name: "Date", value: "Fri, 24 May 2013 00:00:00 GMT"),
                (name: "x-amz-storage-class", value: "REDUCED_REDUNDANCY"),
            ]
        )
        #expect(request.encodedPath == "/test%24file.text")
        let signed = signer.signHeaders(request, payload: payload, date: date)

        #expect(signed.calculation.canonicalRequest == """
            PUT
            /test%24file.text

            date:Fri, 24 May 2013 00:00:00 GMT
            host:examplebucket.s3.amazonaws.com
            x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072
            x-amz-date:20130524T000000Z
            x-amz-storage-class:REDUCED_REDUNDANCY

            date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class
            44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072
            """)
        #expect(signed.calculation.stringToSign == """
            AWS4-HMAC-SHA256
            20130524T000000Z
            20130524/us-east-1/s3/aws4_request
            9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d
            """)
        #expect(signed.calculation.signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    @Test func getBucketLifecycle() {
        let request = SigV4Request(method: "GET", host: host, path: "/", query: [(name: "lifecycle", value: "")])
        #expect(request.encodedQuery == "lifecycle=")
        let signed = signer.signHeaders(request, payload: .empty, date: date)

        #expect(signed.calculation.canonicalRequest == """
            GET
            /
            lifecycle=
            host:examplebucket.s3.amazonaws.com
            x-amz-content-sha256:\(emptyHash)
            x-amz-date:20130524T000000Z

            host;x-amz-content-sha256;x-amz-date
            \(emptyHash)
            """)
        #expect(signed.calculation.stringToSign.split(separator: "\n").last == "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca")
        #expect(signed.calculation.signature == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    @Test func listObjectsWithPrefixAndMaxKeys() {
        let request = SigV4Request(
            method: "GET",
            host: host,
            path: "/",
            query: [(name: "prefix", value: "J"), (name: "max-keys", value: "2")]
        )
        #expect(request.encodedQuery == "max-keys=2&prefix=J")
        let signed = signer.signHeaders(request, payload: .empty, date: date)

        #expect(signed.calculation.canonicalRequest == """
            GET
            /
            max-keys=2&prefix=J
            host:examplebucket.s3.amazonaws.com
            x-amz-content-sha256:\(emptyHash)
            x-amz-date:20130524T000000Z

            host;x-amz-content-sha256;x-amz-date
            \(emptyHash)
            """)
        #expect(signed.calculation.stringToSign.split(separator: "\n").last == "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7")
        #expect(signed.calculation.signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    @Test func presignedGetObject() {
        let request = SigV4Request(method: "GET", host: host, path: "/test.txt")
        let presigned = signer.presign(request, expiresIn: 86_400, date: date)

        #expect(presigned.calculation.canonicalRequest == """
            GET
            /test.txt
            X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host
            host:examplebucket.s3.amazonaws.com

            host
            UNSIGNED-PAYLOAD
            """)
        #expect(presigned.calculation.stringToSign == """
            AWS4-HMAC-SHA256
            20130524T000000Z
            20130524/us-east-1/s3/aws4_request
            3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04
            """)
        #expect(presigned.calculation.signature == "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
        #expect(presigned.queryString == "X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                + "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    }
}
