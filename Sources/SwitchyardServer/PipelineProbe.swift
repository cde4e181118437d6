import Controller
import NIOCore
import Router
public import SwitchyardCore

/// Runs envelopes through identity, filters, tags, lanes, route matching and request
/// rendering without I/O, to measure the per-message CPU of the domain logic.
public enum PipelineProbe {
    public static func run(configuration: SwitchyardConfiguration, topics: [String], messages: Int) throws -> (seconds: Double, forwarded: Int) {
        let snapshot = try PipelineSnapshot.offline(configuration)
        let payload = ByteBuffer(string: String(repeating: "x", count: 128))
        let clock = SystemMonotonicClock()
        let start = clock.nowNanos()
        var rendered = 0
        for i in 0..<messages {
            var envelope = Envelope(
                id: MessageID.generate(),
                channel: "http",
                topic: topics[i % topics.count],
                payload: payload,
                headers: [HeaderField("content-type", "application/octet-stream")],
                receivedAt: WallClock.nowNanos(),
                trace: .generate()
            )
            guard Pipeline.identify(&envelope, controller: snapshot.controller) == nil else { continue }
            guard case Admission.accepted = snapshot.controller.admit(&envelope) else { continue }
            guard let (route, captures) = snapshot.router.table.match(envelope.topic),
                let instance = snapshot.directory.instances(of: route.targets[0].service).first
            else { continue }
            let request = Router.request(
                for: envelope,
                target: route.targets[0],
                captures: captures,
                instance: instance,
                fallback: false,
                attempt: 1
            )
            rendered += request.headers.count > 0 ? 1 : 0
        }
        return (Double(clock.nowNanos() - start) / 1e9, rendered)
    }
}
