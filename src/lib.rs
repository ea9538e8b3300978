//! kube-audit-stream: Kubernetes audit events from every kube-apiserver replica, served
//! as an authorized, bandwidth-bounded WATCH stream of the aggregated API
//! `audit.k8s.io/v1alpha1`.
//!
//! Data flows one way: `ingest` → `bus` → `watch`, never back.
//!
//! * [`config`]: flags, their validation into `Settings`, the `--dev` preset.
//! * [`server`]: `App` (the shared handles), `run(app, listener, shutdown)`: accept loop,
//!   TLS, routing, authentication and authorization of every request, graceful shutdown.
//! * [`stall`]: cuts off connections whose peer stopped reading.
//! * [`tls`]: rustls configuration, serving-certificate reload, client-certificate checks.
//! * [`authn`]: who is asking (`UserInfo`, the authenticator chain, static tokens), and
//!   who may push (`authn::pusher`).
//! * [`authz`]: may they (`Attributes`, `Authorizer`, ABAC, always-allow paths).
//! * [`ingest`]: `POST /ingest`, the audit webhook push.
//! * [`event`]: decoding an `EventList` in one pass and serialising each event once.
//! * [`bus`]: resourceVersions, the replay window, fan-out indexed by scope to bounded
//!   per-subscriber queues.
//! * [`selector`]: `fieldSelector` parsing and matching, applied by the bus.
//! * [`watch`]: the WATCH endpoints: query, the streaming body that batches ready
//!   events into frames, and the registry of open watches (slots, the sweeper that ends
//!   watches whose client stopped reading, shutdown).
//! * [`budget`]: each watcher's byte budget: send whole, truncated, or drop.
//! * [`discovery`]: `/apis` documents, legacy and aggregated.
//! * [`status`]: `ApiError` → `meta.k8s.io/v1` `Status`.
//! * [`reply`]: the response body type and plain responses.
//! * [`metrics`]: Prometheus metrics in the app's own registry.

pub mod authn;
pub mod authz;
pub mod budget;
pub mod bus;
pub mod config;
pub mod discovery;
pub mod event;
pub mod ingest;
pub mod metrics;
pub mod reply;
pub mod selector;
pub mod server;
pub mod stall;
pub mod status;
pub mod table;
pub mod tls;
pub mod watch;
