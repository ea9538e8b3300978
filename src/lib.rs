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
//! * [`authn`]: who is asking (`UserInfo`, the authenticator chain, static tokens).
//! * [`authz`]: may they (`Attributes`, `Authorizer`, ABAC, always-allow paths).
//! * [`ingest`]: `POST /ingest`, the audit webhook push.
//! * [`event`]: decoding an `EventList` and serialising each event once.
//! * [`bus`]: resourceVersions, the replay window, bounded fan-out to subscribers.
//! * [`watch`]: the WATCH endpoints: query, scope, the streaming body, and the watchdog
//!   that ends a watch whose client stopped reading.
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
pub mod server;
pub mod stall;
pub mod status;
pub mod tls;
pub mod watch;
