//! The web-side flags both binaries take: `--http HOST:PORT` and `--http-token FILE`.
//!
//! Shared by `#[path]` inclusion: a folder without `main.rs` is not a binary of its own.

use std::net::SocketAddr;
use std::path::Path;

use p2ptorrent::error::report;
use p2ptorrent::http::HttpConfig;

/// The web side's config, if `--http` was given; the error is ready to print.
pub fn config(
    addr: Option<SocketAddr>,
    token: Option<&Path>,
) -> Result<Option<HttpConfig>, String> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let config = HttpConfig::new(addr);
    match token {
        Some(path) => config.token_file(path).map(Some).map_err(|e| report(&e)),
        None => Ok(Some(config)),
    }
}

/// The line that says where the page is.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map(|a| format!("; web page, /metrics and /api/status on http://{a}/"))
        .unwrap_or_default()
}
