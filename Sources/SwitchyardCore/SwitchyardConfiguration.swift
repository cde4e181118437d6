/// The whole configuration: one YAML file with the sections of the user-facing contract
/// (`node`, `listeners`, `channels`, `filters`, `tags`, `lanes`, `routes`, `services`,
/// `registry`, `journal`, `telemetry`). Loaded and validated by `SwitchyardConfig`;
/// every field has the embedded default documented in the README.
public struct SwitchyardConfiguration: Sendable, Equatable {
    public var node = Node()
    public var listeners = Listeners()
    public var channels = Channels()
    public var filters: [FilterRule] = []
    public var tags: [TagRule] = []
    public var lanes: [LaneRule] = []
    public var routes: [RouteRule] = []
    public var services: [String: ServiceRule] = [:]
    public var registry = Registry()
    public var gateway = Gateway()
    public var journal = Journal()
    public var resilience = Resilience()
    public var telemetry = Telemetry()

    public init() {}

    public struct Node: Sendable, Equatable {
        public var name = "switchyard"
        public var dataDir = "./switchyard-data"
        /// Event-loop threads for every listener and upstream connection; 0: one per core.
        public var threads = 0
        /// On SIGTERM: not ready at once, listeners keep serving this long, then they stop.
        public var shutdownDelaySeconds = 0.0
        public init() {}
    }

    public struct Listener: Sendable, Equatable {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    public struct Listeners: Sendable, Equatable {
        public var http = Listener(host: "0.0.0.0", port: 8080)
        public var admin = Listener(host: "127.0.0.1", port: 8090)
        public var mqtt = Listener(host: "0.0.0.0", port: 1883)
        /// MQTT over TLS: on only when a certificate chain and a key are given (PEM files; there
        /// is no built-in certificate).
        public var mqtts = Listener(host: "0.0.0.0", port: 8883)
        public var mqttsCertificate: String?
        public var mqttsKey: String?
        public var mqttsEnabled: Bool { mqttsCertificate != nil && mqttsKey != nil }
        /// The Nacos-compatible registry and config API. Loopback by default: bound elsewhere, it needs auth.
        public var nacos = Listener(host: "127.0.0.1", port: 8848)
        /// The HTTP channel and gateway over TLS (HTTP/2 by ALPN): on only with a certificate and key.
        public var https = Listener(host: "0.0.0.0", port: 8443)
        public var httpsCertificate: String?
        public var httpsKey: String?
        /// Client certificates are verified against these CAs (mutual TLS); none: not asked for.
        public var httpsClientCA: String?
        /// With a client CA: `optional` (a certificate, when sent, must verify) or `required`.
        public var httpsClientAuthRequired = false
        public var httpsEnabled: Bool { httpsCertificate != nil && httpsKey != nil }
        public init() {}
    }

    public struct Channels: Sendable, Equatable {
        public var http = HTTPChannel()
        public var mqtt = MQTTChannel()
        /// Patterns such as `devices/{product}/{device}/#` that name the product and device in a topic.
        public var devicePatterns: [String] = ["devices/{product}/{device}/#"]
        public init() {}
    }

    public struct HTTPChannel: Sendable, Equatable {
        public var enabled = true
        /// Hard cap on a request body, before any filter runs (413 past it).
        public var maxBodyBytes = 1 << 20
        public var deviceHeader = "x-device-id"
        public var productHeader = "x-product-key"
        public var messageIDHeader = "x-message-id"
        /// Most messages one `POST /v1/batch` may carry.
        public var maxBatchItems = 1000
        /// A connection must send a complete request head within this after opening or after
        /// its last answer (slow-loris clients, idle keep-alive connections), else it is closed.
        public var headerTimeoutSeconds = 60.0
        /// HTTP/2 besides HTTP/1.1: by prior knowledge (h2c) on `listeners.http`, by ALPN on `listeners.https`.
        public var http2 = true
        /// The event loops of the plain HTTP listener (`listeners.http`).
        public var transport = HTTPTransport.epoll
        public init() {}
    }

    /// Event loops for a listener: Switchyard's own on `epoll` (lighter per request), or
    /// SwiftNIO's.
    public enum HTTPTransport: String, Sendable, Equatable, CaseIterable {
        case epoll, nio
    }

    public struct MQTTChannel: Sendable, Equatable {
        public var enabled = true
        /// Off by default: with it on, any client may connect and publish (tests, trusted networks).
        public var allowAnonymous = false
        public var maxPacketBytes = 1 << 20
        /// Unacknowledged QoS 1/2 messages per connection (v5 Receive Maximum).
        public var receiveMaximum = 64
        /// Keep-alive granted at most (and to clients asking for none).
        public var maxKeepAliveSeconds = 3600
        public var maxConnections = 100_000
        /// A signed-in device publishes and subscribes only under this topic space.
        public var aclTemplate = "devices/{product}/{device}/#"
        /// Downlink commands go to `{this}/{command id}`; replies come back on `…/{command id}/reply`.
        public var commandTopic = "devices/{product}/{device}/commands"
        /// Connects and disconnects of signed-in devices as messages on `$events/{product}/{device}/…`.
        public var connectionEvents = false
        /// Topic filters nobody may publish to / subscribe to.
        public var denyPublish: [String] = []
        public var denySubscribe: [String] = []
        /// More topic filters a signed-in device may publish to / subscribe to (templates with
        /// `{product}` and `{device}`).
        public var allowPublish: [String] = []
        public var allowSubscribe: [String] = []
        /// How long a session outlives its connection at most (v5 clients asking for more get
        /// this; 3.1.1 clean-session-0 sessions get exactly this).
        public var maxSessionExpirySeconds = 7200
        /// Messages waiting per session (offline, or behind the in-flight window); past it the
        /// oldest QoS 0 message goes first, else the newest (counted).
        public var maxQueuedMessages = 1000
        /// QoS 1/2 messages sent to one client and not yet acknowledged.
        public var maxInflight = 32
        /// Topic aliases a v5 client may use towards the broker.
        public var topicAliasMaximum = 64
        public var sharedSubscriptions = true
        /// A device message no route takes goes only to MQTT subscribers (outcome `broker_only`,
        /// not journaled); false: it is dead-lettered as `unrouted`, like HTTP messages.
        public var unroutedToSubscribersOnly = true
        /// New connections per second on the listener (bursts of as many); 0: no limit.
        public var maxConnectionRate = 1000.0
        /// Seconds between `$SYS/broker/…` updates; 0: none.
        public var sysIntervalSeconds = 10
        public init() {}
    }

    public enum RateScope: String, Sendable, Equatable, CaseIterable {
        case device, product, channel, global
    }

    /// One filter of the ordered chain.
    public enum FilterRule: Sendable, Equatable {
        case source(allowChannels: [String], denyChannels: [String], allowCIDRs: [String], denyCIDRs: [String])
        case maxPayload(bytes: Int)
        case products(allow: [String], deny: [String])
        case devices(allow: [String], deny: [String])
        case rateLimit(scope: RateScope, rate: Double, burst: Double, maxKeys: Int)
        case dedup(windowSeconds: Double, maxEntries: Int)

        public var kind: String {
            switch self {
            case .source: "source"
            case .maxPayload: "max_payload"
            case .products: "products"
            case .devices: "devices"
            case .rateLimit(let scope, _, _, _): "rate_limit(\(scope.rawValue))"
            case .dedup: "dedup"
            }
        }
    }

    /// Sets tags on messages that match every given condition.
    public struct TagRule: Sendable, Equatable {
        public var topic: String?
        public var products: [String] = []
        public var devices: [String] = []
        public var field: FieldMatch?
        public var set: [String: String] = [:]
        public init() {}
    }

    /// A top-level JSON field of the payload; `equals == nil` means "present".
    public struct FieldMatch: Sendable, Equatable {
        public var name: String
        public var equals: String?
        public init(name: String, equals: String?) {
            self.name = name
            self.equals = equals
        }
    }

    public enum LaneFallback: String, Sendable, Equatable {
        /// Use baseline instances when the lane has none (the forwarded request says so).
        case baseline
        /// Dead-letter with reason `lane_unavailable`.
        case strict
    }

    public enum HashKey: Sendable, Equatable {
        case device, product
        case tag(String)
        /// Requests through the gateway: a header, cookie or query parameter (e.g. a user id).
        case header(String)
        case cookie(String)
        case param(String)
        /// A claim of the request's verified JWT (e.g. `sub`).
        case claim(String)

        public var description: String {
            switch self {
            case .device: "device"
            case .product: "product"
            case .tag(let t): "tag:\(t)"
            case .header(let h): "header:\(h)"
            case .cookie(let c): "cookie:\(c)"
            case .param(let p): "param:\(p)"
            case .claim(let c): "claim:\(c)"
            }
        }
    }

    /// A named lane and its entry rules (any rule admits a message).
    public struct LaneRule: Sendable, Equatable {
        public var name: String
        public var fallback = LaneFallback.baseline
        public var devices: [String] = []
        public var products: [String] = []
        public var tags: [String: String] = [:]
        public var percentage: Double?
        public var hashKey = HashKey.device
        /// Requests through the gateway: a header (lower-case name), cookie or query parameter
        /// with one of these values admits.
        public var headers: [String: ValueMatch] = [:]
        public var cookies: [String: ValueMatch] = [:]
        public var params: [String: ValueMatch] = [:]
        /// Claims of a verified JWT (`gateway.jwt`); a token that does not verify admits nobody.
        public var claims: [String: ValueMatch] = [:]
        public init(name: String) { self.name = name }
    }

    /// A request value's match: one of `values` (`==` is a list of one), or the `regex`.
    public struct ValueMatch: Sendable, Equatable {
        public var values: [String] = []
        /// Searched in the value (anchor it with `^…$` for a whole match).
        public var regex: String?
        public init(values: [String] = [], regex: String? = nil) {
            self.values = values
            self.regex = regex
        }
    }

    /// How the gateway verifies JSON Web Tokens (RFC 7519): the keys and the claims it checks.
    public struct JWTSettings: Sendable, Equatable {
        /// A JWKS document (RFC 7517): RSA, EC P-256/P-384 and `oct` keys.
        public var jwksFile: String?
        public var keys: [JWTKey] = []
        /// When set, `iss` must equal it.
        public var issuer: String?
        /// When set, `aud` must name one of them.
        public var audiences: [String] = []
        /// Clock skew allowed on `exp` and `nbf`.
        public var leewaySeconds = 60.0
        /// Besides `Authorization: Bearer`, the token may come in this cookie.
        public var cookie: String?
        public var isConfigured: Bool { jwksFile != nil || !keys.isEmpty }
        public init() {}
    }

    /// One configured verification key: an HMAC secret (file) or a PEM public key.
    public struct JWTKey: Sendable, Equatable {
        public var kid: String?
        /// HS256/384/512, RS256/384/512, ES256 or ES384.
        public var alg: String
        public var secretFile: String?
        public var pemFile: String?
        public var pem: String?
        public init(alg: String) { self.alg = alg }
    }

    /// The API gateway on the HTTP listener: requests matching a route stream to a service.
    public struct Gateway: Sendable, Equatable {
        public var routes: [GatewayRoute] = []
        /// Callers from these networks may bring their lane (`x-switchyard-lane`, baggage
        /// `lane=`); from anyone else it is removed and the entry rules decide.
        public var trustedCIDRs: [String] = ["127.0.0.0/8", "::1/128"]
        /// Callers on `listeners.https` whose verified client certificate names one of these
        /// (common name, DNS or URI alternative name, e.g. `spiffe://shop/orders`) are trusted too.
        public var trustedIdentities: [String] = []
        /// Trusted callers (the services) reach any service as `/<service>/…` or with `Host:
        /// <service>.internal`, their lane honoured: the lane follows the call chain.
        public var egress = true
        public var jwt = JWTSettings()
        /// Trusted callers sending this header get `x-switchyard-lane-effective` and
        /// `x-switchyard-upstream` on the response.
        public var debugHeader = "x-switchyard-debug"
        /// One JSON line per request (trace id, lane, route, upstream, status, duration) to this
        /// file, or `stdout`; nil: off.
        public var accessLog: String?
        public init() {}
    }

    /// Header changes on the way up (request) or down (response).
    public struct HeaderRewrite: Sendable, Equatable {
        /// Replaces any value the header had.
        public var set: [String: String] = [:]
        /// Adds a value beside existing ones.
        public var add: [String: String] = [:]
        public var remove: [String] = []
        public var isEmpty: Bool { self.set.isEmpty && add.isEmpty && remove.isEmpty }
        public init() {}
    }

    public struct CORSPolicy: Sendable, Equatable {
        /// `*` allows any origin (never with credentials).
        public var origins: [String] = []
        public var methods: [String] = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        public var headers: [String] = ["authorization", "content-type"]
        public var exposeHeaders: [String] = []
        public var credentials = false
        public var maxAgeSeconds = 600
        public init() {}
    }

    public struct APIKeyPolicy: Sendable, Equatable {
        public var header = "x-api-key"
        /// Consumer name → key.
        public var keys: [String: String] = [:]
        /// Lines of `consumer key` (read at start and on reload).
        public var file: String?
        public init() {}
    }

    public struct RouteRateLimit: Sendable, Equatable {
        public enum Scope: String, Sendable, Equatable {
            /// All requests of the route together.
            case route
            /// Per consumer: the API key's consumer, else the JWT's `sub`, else the client address.
            case consumer
            /// Per client address.
            case ip
        }
        public var per: Scope
        public var rate: Double
        public var burst: Double
        public init(per: Scope, rate: Double, burst: Double) {
            self.per = per
            self.rate = rate
            self.burst = burst
        }
    }

    /// Drills: delay or abort a share of a route's requests, optionally only in some lanes.
    public struct FaultInjection: Sendable, Equatable {
        public var delaySeconds = 0.0
        public var delayPercent = 0.0
        public var abortStatus = 503
        public var abortPercent = 0.0
        /// Empty: every lane (baseline included).
        public var lanes: [String] = []
        public init() {}
    }

    public enum JWTRequirement: String, Sendable, Equatable {
        /// A valid token is needed (401 otherwise).
        case required
        /// A token, when sent, must be valid (401 otherwise); none is fine.
        case optional
        /// Tokens are not looked at on this route (lanes by claim do not apply).
        case off
    }

    public struct GatewayRoute: Sendable, Equatable {
        public var name: String
        /// Host names (`*.example.com` for any subdomain); empty: any host.
        public var hosts: [String] = []
        public var pathPrefix = "/"
        /// Empty: any method.
        public var methods: [String] = []
        public var service: String
        public var namespace = "public"
        public var group = "DEFAULT_GROUP"
        /// Remove the prefix before forwarding (`/api/orders/1` → `/1`).
        public var stripPrefix = false
        /// Until the upstream's response head arrives.
        public var timeoutSeconds = 30.0
        /// Instead of `path_prefix`: the path (query excluded) must contain a match.
        public var pathRegex: String?
        /// Request headers the route requires (lower-case names).
        public var headers: [String: ValueMatch] = [:]
        /// A plain upstream URL instead of a service (no lanes: one upstream).
        public var url: String?
        /// Replaces the matched `path_prefix` (`/api/v1` → `/v2`).
        public var prefixRewrite: String?
        /// Further attempts on another instance when the upstream cannot be reached, answers
        /// 502/503/504 or times out; idempotent methods only unless `retry_non_idempotent`.
        public var retries = 1
        public var retryNonIdempotent = false
        public var jwt = JWTRequirement.optional
        public var apiKeys: APIKeyPolicy?
        public var cors: CORSPolicy?
        public var maxBodyBytes: Int?
        public var rateLimits: [RouteRateLimit] = []
        public var requestHeaders = HeaderRewrite()
        public var responseHeaders = HeaderRewrite()
        public var fault: FaultInjection?
        /// A circuit breaker over this route's outcomes (nil: none).
        public var breaker: BreakerRule?
        /// Requests in flight on this route at most (503 `concurrency_limit` past it); nil: no limit.
        public var maxConcurrency: Int?
        public init(name: String, service: String) {
            self.name = name
            self.service = service
        }
    }

    public struct RouteRule: Sendable, Equatable {
        public var name: String
        public var match: String
        public var targets: [TargetRule] = []
        /// A message older than this is dead-lettered with reason `expired` instead of delivered.
        public var ttlSeconds = 86_400.0
        public init(name: String, match: String) {
            self.name = name
            self.match = match
        }
    }

    public struct TargetRule: Sendable, Equatable {
        public var service: String
        /// Path template; `{name}` is replaced by a named capture of the route's regex
        /// or by `topic`, `device`, `product`, `id`.
        public var path = "/"
        public var method = "POST"
        public var timeoutSeconds = 5.0
        /// A circuit breaker over this target's outcomes (nil: none).
        public var breaker: BreakerRule?
        public var retries = 2
        public var backoffBaseSeconds = 0.05
        public var backoffMaxSeconds = 2.0
        /// When set, messages go to this target in batches: one request, settled and retried as a whole.
        public var batch: BatchRule?
        /// Where the registry holds the service when it is not declared under `services`.
        public var namespace = "public"
        public var group = "DEFAULT_GROUP"
        public init(service: String) { self.service = service }
    }

    public enum BatchFormat: String, Sendable, Equatable {
        /// A JSON array of message objects.
        case json
        /// One message object per line (`application/x-ndjson`).
        case ndjson
    }

    public struct BatchRule: Sendable, Equatable {
        public var max = 100
        public var lingerSeconds = 0.005
        public var format = BatchFormat.json
        public init() {}
    }

    public struct StaticInstance: Sendable, Equatable {
        public var url: String
        public var weight = 100
        public var lane: String?
        public init(url: String) { self.url = url }
    }

    public struct ServiceRule: Sendable, Equatable {
        public var instances: [StaticInstance] = []
        /// Requests in flight per instance; more wait for a free slot.
        public var maxConcurrency = 256
        public var circuit = CircuitRule()
        public init() {}
    }

    /// Per instance: after `failures` consecutive failed attempts (refused connection, timeout,
    /// broken connection, 5xx) the instance gets no messages for `openSeconds`; then one probe
    /// decides (success closes it, failure opens it again for twice as long, up to `maxOpenSeconds`).
    /// A route target's circuit breaker (see `TargetBreaker`); thresholds of 0 are off.
    public struct BreakerRule: Sendable, Equatable {
        public var windowSeconds = 10.0
        public var minRequests = 20
        public var errorRatio = 0.5
        public var slowRatio = 0.0
        public var slowCallSeconds = 1.0
        public var errorCount = 0
        public var openSeconds = 5.0
        public var halfOpenProbes = 3
        public var closeAfter = 2
        public init() {}
    }

    /// How the router and the gateway treat instances that are new, failing or leaving.
    public struct Resilience: Sendable, Equatable {
        /// New and returning instances ramp up their share (0 seconds: off).
        public var warmUpSeconds = 60.0
        public var warmUpAggression = 1.0
        public var warmUpMinPercent = 10.0
        /// Circuits (ejections) never take more than this share of a service's instances out.
        public var maxEjectionPercent = 50.0
        /// Retries in flight per service stay within this share of its active requests …
        public var retryBudgetPercent = 20.0
        /// … or this many, whichever is more.
        public var retryBudgetMinimum = 3
        /// A gateway answer slower than this counts as a failure for the instance's circuit
        /// (slow instances get ejected like failing ones); 0: off.
        public var slowCallSeconds = 0.0
        public init() {}
    }

    public struct CircuitRule: Sendable, Equatable {
        /// 0 turns the breaker off.
        public var failures = 5
        public var openSeconds = 5.0
        public var maxOpenSeconds = 60.0
        public init() {}
    }

    /// The service registry and config center (Nacos v1 API on `listeners.nacos`).
    public struct Registry: Sendable, Equatable {
        public enum Auth: String, Sendable, Equatable, CaseIterable {
            /// On unless the listener is bound to loopback only.
            case auto
            case on
            case off
        }
        public var enabled = true
        public var auth = Auth.auto
        public var tokenTTLSeconds = 18_000
        /// An instance list that turns empty through a store restart or read error is ignored
        /// by the router this long (the last good list keeps serving).
        public var emptyProtectionSeconds = 30.0
        /// Server-side TCP checks of persistent instances; 0: none.
        public var healthCheckIntervalSeconds = 5.0
        /// Largest config content accepted.
        public var maxConfigBytes = 1 << 20
        /// Switchyard's own filters, tags, lanes, routes and services from this config
        /// (tenant "" = public), overriding the file's, hot-reloaded on publish.
        public var configDataID: String?
        public var configGroup = "SWITCHYARD"
        public var configTenant = ""
        public init() {}

        /// Whether the API asks for a token, given the host its listener binds.
        public func authEnabled(listenerHost: String) -> Bool {
            switch auth {
            case .on: true
            case .off: false
            case .auto: !Self.isLoopback(listenerHost)
            }
        }

        public static func isLoopback(_ host: String) -> Bool {
            host == "localhost" || host == "::1" || host.hasPrefix("127.")
        }
    }

    public struct Journal: Sendable, Equatable {
        /// Off: 202 means "in memory" and a crash loses what is in flight (tests, benchmarks).
        public var enabled = true
        /// Backpressure: past this many bytes of unsettled messages, channels push back (HTTP 503).
        public var maxBytes = 1 << 30
        public var segmentBytes = 64 << 20
        /// Group commit: how long a record may wait for others to share its fsync.
        public var maxCommitLatencySeconds = 0.002
        /// fsync each commit; off trades the durability promise for speed.
        public var sync = true
        /// Dead letters kept in memory (oldest evicted first, counted).
        public var deadLetterLimit = 10_000
        public init() {}
    }

    public struct Telemetry: Sendable, Equatable {
        public var logLevel = "info"
        /// Require the admin token on `/metrics` too.
        public var metricsRequireToken = false
        public init() {}
    }
}
