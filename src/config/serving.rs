//! `Secure serving` flags: where to listen, the serving certificate, and what one
//! connection and one request head may take.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Error, err, parse_duration};

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Secure serving")]
pub struct SecureServing {
    /// The port on which to serve HTTPS.
    #[arg(long, default_value_t = 8443)]
    pub secure_port: u16,
    /// The IP address on which to listen [default: 0.0.0.0; 127.0.0.1 with --dev].
    #[arg(long)]
    pub bind_address: Option<IpAddr>,
    /// Serving certificate (PEM, may include intermediates). Reloaded when it changes.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM) matching --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Where the self-signed certificate is kept when --tls-cert-file is not given.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Largest request head (request line and headers), in bytes; a larger one is
    /// answered 431. kube-apiserver's (Go's default MaxHeaderBytes): a front proxy's
    /// X-Remote-Group headers for a user in many groups must fit.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_request_header_bytes: usize,
    /// Longest request URL (path and query), in bytes; a longer one is answered 414. The
    /// longest URL this API means is a watch with a field selector on every field and a
    /// continue token, under 2 KiB; longer is not a request but a payload.
    #[arg(long, default_value_t = 16 << 10)]
    pub max_url_bytes: usize,
    /// A client that has not finished the TLS handshake in this long is disconnected.
    /// Handshakes take milliseconds; the rest is a client holding a connection slot.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// A client must send each request head (HTTP/1.1), or its connection's first request
    /// (HTTP/2), within this long after it may, else it is disconnected (slowloris).
    /// kube-apiserver's ReadHeaderTimeout.
    #[arg(long, default_value = "32s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,
}

/// What one connection and one request head may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_request_header_bytes: usize,
    pub max_url_bytes: usize,
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
}

/// Below this no client's ordinary request head fits (a bearer token and a few headers);
/// above it HTTP/2's header list size setting (a u32, with room for the check's margin)
/// cannot say it.
const REQUEST_HEADER_BYTES: std::ops::RangeInclusive<usize> = 4096..=(256 << 20);

impl SecureServing {
    pub(super) fn limits(&self) -> Result<ConnectionLimits, Error> {
        if !REQUEST_HEADER_BYTES.contains(&self.max_request_header_bytes) {
            return Err(err(
                "--max-request-header-bytes",
                format!(
                    "must be from {} to {}",
                    REQUEST_HEADER_BYTES.start(),
                    REQUEST_HEADER_BYTES.end()
                ),
            ));
        }
        // (A URL above --max-request-header-bytes meets that limit first.)
        if self.max_url_bytes < 256 {
            return Err(err("--max-url-bytes", "must be at least 256"));
        }
        for (flag, d) in [
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
            ("--request-header-timeout", self.request_header_timeout),
        ] {
            if d.is_zero() {
                return Err(err(flag, "must be > 0"));
            }
        }
        Ok(ConnectionLimits {
            max_request_header_bytes: self.max_request_header_bytes,
            max_url_bytes: self.max_url_bytes,
            tls_handshake_timeout: self.tls_handshake_timeout,
            request_header_timeout: self.request_header_timeout,
        })
    }

    pub(super) fn validate(&self, dev: bool) -> Result<SocketAddr, Error> {
        let ip = match (self.bind_address, dev) {
            (Some(ip), true) if !ip.is_loopback() => {
                return Err(err(
                    "--bind-address",
                    format!("{ip} is not a loopback address; --dev serves loopback only"),
                ));
            }
            (Some(ip), _) => ip,
            (None, true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (None, false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        Ok(SocketAddr::new(ip, self.secure_port))
    }
}

/// Names the self-signed certificate is valid for.
pub(super) fn self_signed_hosts(ip: IpAddr) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !ip.is_unspecified() && !ip.is_loopback() {
        hosts.push(ip.to_string());
    }
    hosts
}
