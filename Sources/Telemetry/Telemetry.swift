// Telemetry: the Prometheus backend for swift-metrics and the text exposition of the
// message ledger (whose counters must be read together, see `MessageLedger`).
import CoreMetrics
import NIOConcurrencyHelpers
public import Prometheus
public import SwitchyardCore

public enum Telemetry {
    /// The registry behind `/metrics` for everything recorded through swift-metrics.
    public static let registry = PrometheusCollectorRegistry()
    /// The duration histograms (swift-metrics timers) behind `/metrics`, recorded without a lock.
    public static let durations = DurationHistograms(bounds: [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ])
    private static let bootstrapped = NIOLockedValueBox(false)

    /// Installs the Prometheus factory as the swift-metrics backend, once per process.
    public static func bootstrapMetrics() {
        bootstrapped.withLockedValue { done in
            guard !done else { return }
            MetricsSystem.bootstrap(SwitchyardMetricsFactory(prometheus: PrometheusMetricsFactory(registry: registry), histograms: durations))
            done = true
        }
    }

    /// The Prometheus text exposition: the ledger (consistent snapshot), extra gauges, the
    /// registry, then the duration histograms.
    public static func exposition(ledger: MessageLedger.Snapshot, gauges: [(name: String, help: String, value: Double)]) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
            if labels.isEmpty {
                out += "\(name) \(value)\n"
            } else {
                out += "\(name){\(labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ","))} \(value)\n"
            }
        }
        family("switchyard_messages_received_total", "counter", "Messages received, by channel.")
        for (k, v) in ledger.received.sorted(by: { $0.key < $1.key }) { sample("switchyard_messages_received_total", [("channel", k)], "\(v)") }
        family("switchyard_messages_rejected_total", "counter", "Messages refused by a filter, by channel and reason.")
        for (k, v) in ledger.rejected.sorted(by: { ($0.key.first, $0.key.second) < ($1.key.first, $1.key.second) }) {
            sample("switchyard_messages_rejected_total", [("channel", k.first), ("reason", k.second)], "\(v)")
        }
        family("switchyard_messages_forwarded_total", "counter", "Messages delivered to every target of their route.")
        for (k, v) in ledger.forwarded.sorted(by: { $0.key < $1.key }) { sample("switchyard_messages_forwarded_total", [("route", k)], "\(v)") }
        family("switchyard_messages_retried_total", "counter", "Forward attempts that were retried, by route.")
        for (k, v) in ledger.retried.sorted(by: { $0.key < $1.key }) { sample("switchyard_messages_retried_total", [("route", k)], "\(v)") }
        family("switchyard_messages_dead_lettered_total", "counter", "Messages that ended in the dead-letter list, by route and reason.")
        for (k, v) in ledger.deadLettered.sorted(by: { ($0.key.first, $0.key.second) < ($1.key.first, $1.key.second) }) {
            sample("switchyard_messages_dead_lettered_total", [("route", k.first), ("reason", k.second)], "\(v)")
        }
        family(
            "switchyard_messages_broker_only_total",
            "counter",
            "Messages no route takes, handed only to the channel's own subscribers (MQTT), by channel."
        )
        for (k, v) in ledger.brokerOnly.sorted(by: { $0.key < $1.key }) { sample("switchyard_messages_broker_only_total", [("channel", k)], "\(v)") }
        family("switchyard_messages_in_flight", "gauge", "Messages accepted and not yet forwarded or dead-lettered.")
        sample("switchyard_messages_in_flight", [], "\(ledger.inFlight)")
        for g in gauges {
            family(g.name, "gauge", g.help)
            sample(g.name, [], g.value == g.value.rounded() ? "\(Int64(g.value))" : "\(g.value)")
        }
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        out += String(decoding: bytes, as: UTF8.self)
        durations.emit(into: &out)
        return out
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
