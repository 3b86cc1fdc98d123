import FuzzSupport
import S3Client

// libFuzzer target: the S3 XML response parser, which reads whatever a server (or anything
// between it and us) sends. It must answer with a tree or an S3ClientError, within its limits.

runFuzzer { input in
    _ = try? XMLElement.parse(input)
}
