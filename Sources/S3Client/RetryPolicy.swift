extension S3Configuration {
    /// Exponential backoff with full jitter, as AWS's architecture blog recommends.
    public struct RetryPolicy: Sendable {
        public var maxAttempts = 5
        public var baseDelay: Duration = .milliseconds(100)
        public var maxDelay: Duration = .seconds(10)
        public init() {}

        /// After attempt `attempt` (from 1) failed with `error`: the wait before the next one, or
        /// nil when the failure is final (not worth another attempt, or the last one allowed).
        /// The wait is drawn from `random`, uniformly up to a ceiling that doubles per attempt.
        func delay(after error: S3ClientError, attempt: Int, random: inout some RandomNumberGenerator) -> Duration? {
            guard error.isRetryable, attempt < maxAttempts else { return nil }
            let exponent = min(attempt - 1, 30)
            let ceiling = min(maxDelay, baseDelay * (1 << exponent))
            let nanoseconds = ceiling.components.seconds * 1_000_000_000 + ceiling.components.attoseconds / 1_000_000_000
            return .nanoseconds(Int64.random(in: 0...max(0, nanoseconds), using: &random))
        }
    }
}
