//! The server, one concern per file:
//!
//! * `app`: wiring. `App` holds the shared handles (bus, authenticators, authorizer,
//!   ingest gate, discovery documents, metrics, open watches), built from `Settings`;
//!   start-up failures are a typed `Error`.
//! * `router`: every request is authenticated, described as kube-apiserver
//!   `Attributes`, and authorized there, before any handler runs; then the path and verb
//!   pick the handler. Handlers receive an already-allowed scope and never learn which
//!   authorizer was asked. A new resource or verb is one arm of `Router::resource`.
//! * `accept`: `run(app, listener, shutdown)` accepts TLS connections, serves HTTP/1.1
//!   and HTTP/2 on them, and drains on shutdown.
//! * `stalled_write` and `write_coalescing`: what `accept` wraps each connection's I/O
//!   in: under TLS, a socket write that makes no progress for too long fails (a peer
//!   that stopped reading); over it, writes are gathered in TLS's records and go to the
//!   socket together at a flush.

mod accept;
mod app;
mod router;
mod stalled_write;
mod write_coalescing;

pub use accept::run;
pub use app::{App, Error};
