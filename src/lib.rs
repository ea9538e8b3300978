//! kube-audit-stream: Kubernetes audit events from every kube-apiserver replica, served
//! as an authorized, bandwidth-bounded WATCH stream of the aggregated API
//! `audit.k8s.io/v1alpha1`.
//!
//! The crate in layers: a module imports only from its own layer or the ones below, with
//! no circle, and data flows `ingest` → `bus` → `watch`, never back (`tests/layers.rs`
//! reads this picture and checks every `crate::` path of `src/` against it).
//!
//! ```text
//! L6 main · bin · plugin: the server's thin main; `kubectl audit`, a client of the API
//! L5 server: app (wiring) · router (authn → authz → handler) · accept (TLS, HTTP/1.1, h2)
//! L4 config: flags → each module's own settings type; only main and server import it
//! L3 ingest · watch: POST /ingest → bus · bus → WATCH, LIST, GET, Table, budgets
//! L2 nats · authn · authz · table · metrics · sources: the shared stream; who asks, may they; each pusher's figures
//! L1 bus · event · selector · budget · tls · discovery · response: window, fan-out, lines
//! L0 status · source · logging: know nothing of the crate
//! ```
//!
//! * [`config`]: flags, their validation into `Settings`, the `--dev` preset.
//! * [`server`]: wiring (`App`, the shared handles, and typed start-up errors), routing
//!   (authentication and authorization of every request, then the handler for its path
//!   and verb), and the accept loop (`run(app, listener, shutdown)`: TLS, HTTP/1.1 and
//!   HTTP/2, graceful shutdown, and the connection I/O wrappers that cut off a peer that
//!   stopped reading and gather small writes into one TLS write), a file each.
//! * [`tls`]: rustls configuration, serving-certificate reload, client-certificate checks.
//! * [`authn`]: who is asking (`UserInfo`, the authenticator chain, static tokens), and
//!   who may push (`authn::pusher`).
//! * [`authz`]: may they (`Attributes` and how a request is read into them, `Authorizer`,
//!   ABAC, always-allow paths).
//! * [`ingest`]: `POST /ingest`, the audit webhook push.
//! * [`sources`]: `sources.audit.k8s.io`, one object per pusher identity: what it pushed,
//!   what was refused or recognised as a retry, whether it is silent; counted per push,
//!   built once a second, shared between replicas through a NATS key-value bucket.
//! * [`event`]: decoding an `EventList` in one pass and serialising each event once.
//! * [`bus`]: resourceVersions, the replay window, fan-out indexed by scope to bounded
//!   per-subscriber queues.
//! * [`nats`]: `--bus=nats`: the JetStream stream every replica publishes to and
//!   follows into its bus, so that several replicas serve one stream.
//! * [`selector`]: `fieldSelector` parsing and matching, applied by the bus.
//! * [`watch`]: the read endpoints: the query and its validation, WATCH and WatchList,
//!   LIST (pages of the window) and GET, the streaming body that batches ready events into
//!   frames (the bus's lines shared, not copied), and the registry of open watches
//!   (slots, the sweeper that ends watches whose client stopped reading, shutdown); LIST,
//!   GET and WATCH of `sources` too.
//! * [`table`]: server-side printing, the `meta.k8s.io` Table kubectl asks for.
//! * [`budget`]: each watcher's byte budget: send whole, truncated, or drop.
//! * [`discovery`]: `/apis` documents, legacy and aggregated.
//! * [`status`]: `ApiError` → `meta.k8s.io/v1` `Status`; each layer converts its own
//!   errors into it.
//! * [`source`]: reading the files flags name (one reader, one error naming the file).
//! * [`response`]: the response body type every handler returns (its data: bytes of its
//!   own, or bytes shared with others, such as a watch's frame), plain responses, and
//!   where a panic stops.
//! * [`metrics`]: Prometheus metrics in the app's own registry.
//! * [`logging`]: the log's format (text or component-base JSON) and `-v` verbosity.
//! * [`plugin`]: `kubectl audit`, the kubectl plugin (the `kubectl-audit` binary): `tail`,
//!   `who`, `sources` and `rbac` (the least RBAC for a user's requests) through the user's
//!   kubeconfig, a client of the API like kubectl, never of the server's internals (it
//!   shares only the API's names and annotations, and the latency format of its Table;
//!   `sources` prints the server's own Table).

// No unsafe code anywhere in the crate, and it stays so: the compiler refuses it.
#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod budget;
pub mod bus;
pub mod config;
pub mod discovery;
pub mod event;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod response;
pub mod selector;
pub mod server;
pub mod source;
pub mod sources;
pub mod status;
pub mod table;
pub mod tls;
pub mod watch;
// The kubectl plugin, last: not part of the server.
pub mod plugin;
