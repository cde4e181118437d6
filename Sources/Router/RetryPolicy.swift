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

    /// What one forward attempt means for the message.
    public enum Verdict: Sendable, Equatable {
        case delivered
        /// Final: the service refused it (4xx, 3xx).
        case rejected(detail: String)
        /// Worth another attempt (5xx, timeout, broken connection).
        case failed(reason: String, detail: String)
        /// Switchyard is shutting down: no outcome; the journal delivers it after the next start.
        case interrupted
        /// The instance could not be reached: wait without using up retries.
        case unreachable(detail: String)
    }

    public static func verdict(_ result: Result<ForwardResponse, any Error>, instance: ServiceInstance) -> Verdict {
        switch result {
        case .success(let response) where (200..<300).contains(response.status):
            return .delivered
        case .success(let response) where !isRetryable(status: response.status):
            return .rejected(detail: "\(instance) answered HTTP \(response.status): \(response.bodySnippet)")
        case .success(let response):
            return .failed(reason: "service_error", detail: "\(instance) answered HTTP \(response.status): \(response.bodySnippet)")
        case .failure(let error as ForwardError) where error.kind == .connectFailed:
            return .unreachable(detail: "\(instance): \(error)")
        case .failure(let error as ForwardError) where error.kind == .shutdown:
            return .interrupted
        case .failure(let error as ForwardError):
            return .failed(reason: error.kind.rawValue, detail: "\(instance): \(error)")
        case .failure(let error):
            return .failed(reason: "connection_failed", detail: "\(instance): \(error)")
        }
    }

    /// How long a message waits for an unreachable service before trying again (up to 5 s).
    public static func parkDelay(afterWaits parked: Int) -> Double {
        var rng = FastRandom()
        return min(5.0, 0.1 * Double(1 << min(parked, 6))) * Double.random(in: 0.5...1, using: &rng)
    }

    public func backoff(afterAttempt attempt: Int) -> Double {
        var rng = FastRandom()
        return backoff(afterAttempt: attempt, using: &rng)
    }
}
