//! The bench's handle on the admin API: a base URL and bearer token over the workspace's one
//! admin HTTP client ([`sluicectl::admin_http`], shared with `sluicectl`), with JSON helpers.
//!
//! Owns: nothing but the URL and token. TLS is deliberately not spoken (the admin API listens on
//! loopback or a unix socket), so an `https:` URL is refused with a clear error.

pub use sluicectl::admin_http::Response;
use sluicectl::admin_http::{self, BaseUrl};

/// Errors talking to the admin API, naming the URL the bench was pointed at.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported admin URL `{url}`: use http://HOST:PORT or unix:/path ({source})")]
    Url {
        url: String,
        #[source]
        source: admin_http::HttpError,
    },
    #[error("cannot reach the admin API at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: admin_http::HttpError,
    },
    #[error("admin API at {url}: {source}")]
    Exchange {
        url: String,
        #[source]
        source: admin_http::HttpError,
    },
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AdminClient {
    url: String,
    base: BaseUrl,
    token: String,
}

/// The body as JSON (`Null` when empty or not JSON).
pub fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
}

/// The `error` field of a JSON error body, or the raw body text.
pub fn message(r: &Response) -> String {
    match json(r).get("error").and_then(|e| e.as_str()) {
        Some(s) => s.to_string(),
        None => String::from_utf8_lossy(&r.body).trim().to_string(),
    }
}

impl AdminClient {
    /// Parse `url` (`http://HOST:PORT[/prefix]` or `unix:/path`).
    pub fn new(url: &str, token: &str) -> Result<AdminClient, HttpError> {
        Ok(AdminClient {
            url: url.to_string(),
            base: BaseUrl::parse(url).map_err(|source| HttpError::Url {
                url: url.to_string(),
                source,
            })?,
            token: token.to_string(),
        })
    }

    /// The URL this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send one request; `body` is sent as JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, HttpError> {
        let body = body.map(|b| b.to_string());
        admin_http::request(
            &self.base,
            method,
            path,
            Some(&self.token),
            body.as_deref().map(str::as_bytes),
        )
        .map_err(|source| {
            let url = self.url.clone();
            match source {
                admin_http::HttpError::Resolve(_)
                | admin_http::HttpError::Connect { .. }
                | admin_http::HttpError::ConnectUnix { .. } => HttpError::Connect { url, source },
                _ => HttpError::Exchange { url, source },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_https_and_parses_unix() {
        assert!(AdminClient::new("https://127.0.0.1:7701", "t").is_err());
        let c = AdminClient::new("unix:/run/sluice/admin.sock", "t").unwrap();
        assert_eq!(c.url(), "unix:/run/sluice/admin.sock");
    }

    #[test]
    fn error_message_from_json_or_text() {
        let r = Response {
            status: 404,
            body: br#"{"error":"no such session"}"#.to_vec(),
        };
        assert_eq!(message(&r), "no such session");
        let r = Response {
            status: 500,
            body: b" boom \n".to_vec(),
        };
        assert_eq!(message(&r), "boom");
        assert_eq!(json(&r), serde_json::Value::Null);
    }
}
