//! Where `nats-server` is, for the `--bus=nats` tests (`support::nats`) and the load
//! generator's NATS runs (`hack/loadgen/server.rs` includes this file by path): one
//! lookup, so both find the binary `hack/test` checked. Only std here, because the load
//! generator compiles it as a module of its own; the library crate does not need to know
//! about it.

use std::path::{Path, PathBuf};

/// Where Debian's package puts it: `/usr/sbin`, which a non-root PATH may lack.
const DEBIAN: &str = "/usr/sbin/nats-server";

/// `nats-server` from the PATH, else Debian's. If neither exists, the bare name is returned,
/// so starting it fails with the OS's own "not found", which `cannot_start` explains.
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    });
    if !on_path && Path::new(DEBIAN).is_file() {
        DEBIAN.into()
    } else {
        "nats-server".into()
    }
}

/// What to say when `binary()` could not be started: what went wrong and how to install it.
pub fn cannot_start(error: &std::io::Error) -> String {
    format!(
        "cannot run nats-server ({error}): a real NATS server with JetStream is needed; \
         `hack/test --setup-only` installs it (Debian's nats-server package)"
    )
}
