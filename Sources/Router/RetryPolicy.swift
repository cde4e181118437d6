public import SwitchyardCore

/// Which outcomes are retried, and how long to wait before the next attempt.
public struct RetryPolicy: Sendable {
    public var retries: Int
    public var baseSeconds: Double
    public var maxSeconds: Double

    public init(retries: Int, baseSeconds: Double, maxSeconds: Double) {
        self.retries = retries
        self.baseSeconds = baseSeconds
        self.maxSeconds = maxSeconds
    }

    public init(_ target: SwitchyardConfiguration.TargetRule) {
        self.init(retries: target.retries, baseSeconds: target.backoffBaseSeconds, maxSeconds: target.backoffMaxSeconds)
    }

    /// Connect errors, timeouts, broken connections and 5xx are worth another try; 4xx never.
    public static func isRetryable(status: Int) -> Bool { status >= 500 }

    /// Exponential backoff with "equal jitter": half fixed, half random, capped at `maxSeconds`.
    public func backoff<R: RandomNumberGenerator>(afterAttempt attempt: Int, using rng: inout R) -> Double {
        let exp = min(maxSeconds, baseSeconds * Double(1 << min(max(attempt - 1, 0), 30)))
        return exp / 2 + Double.random(in: 0...(exp / 2), using: &rng)
    }

    public func backoff(afterAttempt attempt: Int) -> Double {
        var rng = FastRandom()
        return backoff(afterAttempt: attempt, using: &rng)
    }
}
