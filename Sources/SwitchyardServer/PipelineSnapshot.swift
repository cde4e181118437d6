// SwitchyardServer: the composition root. Turns a configuration into running services
// (listeners, reload watcher) in one ServiceGroup and owns their shutdown order.
import Controller
import Gateway
import Logging
import Router
import SwitchyardCore

/// Everything compiled from one configuration. Immutable; replaced whole on reload, so a
/// message finishes under the snapshot it started with.
final class PipelineSnapshot: Sendable {
    let configuration: SwitchyardConfiguration
    let controller: Controller
    let router: Router
    let directory: RoutingDirectory
    let gateway: GatewaySnapshot

    init(configuration: SwitchyardConfiguration, shared: SharedParts, previous: PipelineSnapshot?) throws {
        self.configuration = configuration
        controller = try Controller(config: configuration, clock: shared.clock, previous: previous?.controller)
        shared.balancer.health.setWarmUp(configuration.resilience.warmUp)
        shared.balancer.breakers.setMaxEjectionPercent(configuration.resilience.maxEjectionPercent)
        shared.balancer.retryBudget.configure(
            percent: configuration.resilience.retryBudgetPercent,
            minimum: configuration.resilience.retryBudgetMinimum
        )
        directory = RoutingDirectory(configuration: configuration, view: shared.registryView, health: shared.balancer.health)
        let routing = directory
        gateway = try GatewaySnapshot(
            configuration: configuration,
            directory: directory,
            previous: previous?.gateway,
            clock: shared.clock,
            balancer: shared.balancer
        ) { name in
            routing.egressInstances(of: name)
        }
        router = try Router(
            configuration: configuration,
            directory: directory,
            forwarder: shared.forwarder,
            deadLetters: shared.deadLetters,
            ledger: shared.ledger,
            balancer: shared.balancer,
            logger: shared.logger
        )
    }
}

/// State that outlives reloads.
struct SharedParts: Sendable {
    let clock: any MonotonicClock
    let forwarder: any Forwarder
    let deadLetters: DeadLetterList
    let ledger: MessageLedger
    let balancer: Balancer
    let logger: Logger
    /// The registry as the router sees it (nil when the registry is off).
    let registryView: RegistryView?
}
