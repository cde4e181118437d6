import Foundation
import ServiceLifecycle
import UnixSignals

/// Reloads the configuration on SIGHUP and when the file's modification time or size changes
/// (checked every second, which also catches editors that replace the file).
struct ReloadWatcher: Service {
    let app: SwitchyardApplication
    var interval: UInt64 = 1_000_000_000

    func run() async throws {
        let path = app.configPath
        await withTaskGroup(of: Void.self) { group in
            // Trapped even without a config file: SIGHUP must never terminate the node.
            group.addTask {
                let signals = await UnixSignalsSequence(trapping: .sighup)
                for await _ in signals.cancelOnGracefulShutdown() {
                    app.reload(reason: "SIGHUP")
                }
            }
            group.addTask {
                guard let path else { return }
                var last = Self.stamp(path)
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await Task.sleep(nanoseconds: interval)
                    let now = Self.stamp(path)
                    if now != last && now != nil {
                        last = now
                        app.reload(reason: "file changed")
                    }
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }

    static func stamp(_ path: String) -> String? {
        guard let attrs = try? FileManager.default.attributesOfItem(atPath: path) else { return nil }
        let date = (attrs[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let size = (attrs[.size] as? NSNumber)?.intValue ?? -1
        return "\(date)/\(size)"
    }
}
