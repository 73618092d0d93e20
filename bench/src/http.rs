//! A minimal blocking HTTP/1.1 client for the admin API: JSON bodies, bearer token, one
//! request per connection, over TCP (`http://HOST:PORT[/prefix]`) or a unix socket
//! (`unix:/path/to/admin.sock`).
//!
//! Owns: URL parsing for the admin endpoint and the request/response framing. The admin API
//! listens on loopback or a unix socket, so TLS is deliberately not spoken here (an `https:`
//! URL is refused with a clear error). Responses are read to EOF (`Connection: close`);
//! `Content-Length` and chunked bodies are both understood.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported admin URL `{0}`: use http://HOST:PORT or unix:/path")]
    Url(String),
    #[error("cannot reach the admin API at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Tcp { authority: String },
    Unix { path: PathBuf },
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AdminClient {
    url: String,
    endpoint: Endpoint,
    prefix: String,
    token: String,
    timeout: Duration,
}

/// A response: status code and body bytes.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` field of a JSON error body, or the raw body text.
    pub fn message(&self) -> String {
        match self.json().get("error").and_then(|e| e.as_str()) {
            Some(s) => s.to_string(),
            None => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

impl AdminClient {
    /// Parse `url` (`http://HOST:PORT[/prefix]` or `unix:/path`).
    pub fn new(url: &str, token: &str) -> Result<AdminClient, HttpError> {
        let (endpoint, prefix) = if let Some(rest) = url.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return Err(HttpError::Url(url.to_string()));
            }
            (
                Endpoint::Tcp {
                    authority: authority.to_string(),
                },
                path.trim_end_matches('/').to_string(),
            )
        } else if let Some(path) = url.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(HttpError::Url(url.to_string()));
            }
            (
                Endpoint::Unix {
                    path: PathBuf::from(path),
                },
                String::new(),
            )
        } else {
            return Err(HttpError::Url(url.to_string()));
        };
        Ok(AdminClient {
            url: url.to_string(),
            endpoint,
            prefix,
            token: token.to_string(),
            timeout: Duration::from_secs(10),
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
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let host = match &self.endpoint {
            Endpoint::Tcp { authority } => authority.as_str(),
            Endpoint::Unix { .. } => "localhost",
        };
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.prefix,
            self.token,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&body);
        let connect_err = |source| HttpError::Connect {
            url: self.url.clone(),
            source,
        };
        let mut raw = Vec::new();
        match &self.endpoint {
            Endpoint::Tcp { authority } => {
                let mut s = TcpStream::connect(authority.as_str()).map_err(connect_err)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut raw)?;
            }
            Endpoint::Unix { path } => {
                let mut s = UnixStream::connect(path).map_err(connect_err)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut raw)?;
            }
        }
        parse_response(&raw)
    }
}

/// Parse a complete HTTP/1.1 response (read to EOF).
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| HttpError::Malformed("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::Malformed("empty"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse()
                    .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
            );
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or(HttpError::Malformed("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut s: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol = s
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(HttpError::Malformed("chunk size line"))?;
        let line =
            std::str::from_utf8(&s[..eol]).map_err(|_| HttpError::Malformed("chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        s = &s[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = s
            .get(..size)
            .ok_or(HttpError::Malformed("truncated chunk"))?;
        out.extend_from_slice(chunk);
        s = s
            .get(size + 2..)
            .ok_or(HttpError::Malformed("truncated chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = AdminClient::new("http://127.0.0.1:8080/", "t").unwrap();
        assert_eq!(
            c.endpoint,
            Endpoint::Tcp {
                authority: "127.0.0.1:8080".into()
            }
        );
        assert_eq!(c.prefix, "");
        let c = AdminClient::new("http://[::1]:9/api", "t").unwrap();
        assert_eq!(c.prefix, "/api");
        let c = AdminClient::new("unix:/run/sluice/admin.sock", "t").unwrap();
        assert_eq!(
            c.endpoint,
            Endpoint::Unix {
                path: "/run/sluice/admin.sock".into()
            }
        );
        assert!(AdminClient::new("https://x:1", "t").is_err());
        assert!(AdminClient::new("http://", "t").is_err());
        assert!(AdminClient::new("unix:", "t").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\n{\"id\":3}junk")
            .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["id"], 3);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.json()["a"], 1);
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n{\"error\":\"nope\"}").unwrap();
        assert_eq!(r.message(), "nope");
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SPDY 200\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
