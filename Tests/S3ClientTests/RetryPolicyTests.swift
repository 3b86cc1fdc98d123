@testable import S3Client
import TestSupport
import Testing

/// The retry decision: which failures get another attempt, how many, and how long before each.
@Suite("S3 retry policy")
struct RetryPolicyTests {
    private let throttled = S3ClientError.service(S3Error(status: 503, body: [], requestID: nil, resource: "b/k"))
    private var policy: S3Configuration.RetryPolicy {
        var policy = S3Configuration.RetryPolicy()
        policy.maxAttempts = 5
        policy.baseDelay = .milliseconds(100)
        policy.maxDelay = .milliseconds(500)
        return policy
    }

    @Test func aFailureNotWorthRetryingIsFinal() {
        var random = SplitMix64(seed: 1)
        let refused = S3ClientError.service(S3Error(status: 403, body: [], requestID: nil, resource: "b/k"))
        for error in [refused, .invalidResponse("x"), .io("x"), .invalidRequest("x"), .tooLarge(size: 2, maxSize: 1)] {
            #expect(policy.delay(after: error, attempt: 1, random: &random) == nil, "\(error)")
        }
    }

    @Test func theLastAttemptAllowedIsFinal() {
        var random = SplitMix64(seed: 2)
        #expect(policy.delay(after: throttled, attempt: 4, random: &random) != nil)
        #expect(policy.delay(after: throttled, attempt: 5, random: &random) == nil)
    }

    /// Full jitter: every wait lies between zero and a ceiling doubling from `baseDelay` per
    /// attempt up to `maxDelay`, and the same draws give the same waits.
    @Test func waitsStayUnderADoublingCeilingCappedAtTheMaximum() {
        var policy = policy
        policy.maxAttempts = 40
        for seed in UInt64(0)..<50 {
            var random = SplitMix64(seed: seed)
            var again = SplitMix64(seed: seed)
            for attempt in 1..<40 {
                let ceiling = min(Duration.milliseconds(500), .milliseconds(100) * (1 << min(attempt - 1, 30)))
                let delay = policy.delay(after: .integrity("cut short"), attempt: attempt, random: &random)
                #expect(delay.map { $0 >= .zero && $0 <= ceiling } == true, "attempt \(attempt): \(String(describing: delay))")
                #expect(delay == policy.delay(after: .integrity("cut short"), attempt: attempt, random: &again))
            }
        }
    }
}
