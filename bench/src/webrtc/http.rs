//! A small blocking HTTP/1.1 client for WHIP/WHEP (RFC 9725) and Janus's HTTP API: one
//! request per connection, `http://` only (the bench drives servers on its own host or network;
//! put a TLS-terminating proxy in front of it for `https://`).
//!
//! Owns: URL parsing, the request bytes, reading one bounded answer. May not touch: SDP, ICE.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest answer read (an SDP answer or a Janus event is a few KiB).
const MAX_ANSWER: usize = 1 << 20;
/// Most header lines read.
const MAX_HEADERS: usize = 64;

/// Errors of one HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL `{0}`: use http://HOST[:PORT]/PATH")]
    Url(String),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: malformed HTTP answer ({reason})")]
    Malformed { url: String, reason: String },
    #[error("{0}: the answer exceeds 1 MiB")]
    TooLarge(String),
}

/// An `http://` URL split for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host[:port]` as written (the `Host` header).
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| HttpError::Url(s.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(HttpError::Url(s.to_string()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| HttpError::Url(s.to_string()))?;
            let port = match &v6[end + 1..] {
                "" => 80,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| HttpError::Url(s.to_string()))?,
            };
            (v6[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| HttpError::Url(s.to_string()))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        Ok(Url {
            authority: authority.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    /// A `Location` value resolved against this URL (absolute `http://…` or an absolute path).
    pub fn join(&self, location: &str) -> Result<Url, HttpError> {
        if location.starts_with("http://") {
            return Url::parse(location);
        }
        if !location.starts_with('/') {
            return Err(HttpError::Url(location.to_string()));
        }
        Ok(Url {
            path: location.to_string(),
            ..self.clone()
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// Send `method url` with an optional body of `content_type` and bearer token; read the answer
/// (bounded by [`MAX_ANSWER`], each socket operation by `timeout`).
pub fn request(
    url: &Url,
    method: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let name = url.to_string();
    let io = |source| HttpError::Io {
        url: name.clone(),
        source,
    };
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Connect {
            url: name.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| HttpError::Url(name.clone()))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| HttpError::Connect {
            url: name.clone(),
            source,
        })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = s.set_nodelay(true);
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        url.path,
        url.authority,
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(t) = bearer {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 8192];
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(HttpError::TooLarge(name));
        }
        if let Some(done) = complete(&raw) {
            raw.truncate(done);
            break;
        }
    }
    parse(&raw).map_err(|reason| HttpError::Malformed { url: name, reason })
}

/// The length of a complete answer in `raw` (headers plus `Content-Length` body), if known.
fn complete(raw: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())?;
    (raw.len() >= head + len).then_some(head + len)
}

/// A chunked body (RFC 9112 §7.1) decoded; trailers are ignored.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size = std::str::from_utf8(&b[..line_end])
            .ok()
            .and_then(|l| l.split(';').next())
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Parse a whole answer (the body runs to `Content-Length`, through its chunks, or to the
/// end).
pub fn parse(raw: &[u8]) -> Result<Reply, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated head".into()),
        Err(e) => return Err(e.to_string()),
    };
    let status = r.code.ok_or("no status")?;
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| v.trim().to_string())
    };
    let body = &raw[head..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok(Reply {
            status,
            location: header("location"),
            body: dechunk(body)?,
        });
    }
    let body = match header("content-length").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if n <= body.len() => &body[..n],
        Some(Ok(_)) => return Err("body shorter than Content-Length".into()),
        Some(Err(_)) => return Err("bad Content-Length".into()),
        None => body,
    };
    Ok(Reply {
        status,
        location: header("location"),
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/whip/demo/r1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(u.path, "/whip/demo/r1");
        let v6 = Url::parse("http://[::1]:9/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert!(Url::parse("https://h/x").is_err());
        assert!(Url::parse("http://h:x/").is_err());
        let r = u.join("/whip/resource/1/abc").unwrap();
        assert_eq!(r.to_string(), "http://127.0.0.1:8080/whip/resource/1/abc");
        assert!(u.join("relative").is_err());
    }

    #[test]
    fn answers() {
        let raw = b"HTTP/1.1 201 Created\r\nLocation: /whip/resource/1/s\r\nContent-Length: 3\r\n\r\nv=0extra";
        assert_eq!(complete(raw), Some(raw.len() - 5));
        let r = parse(raw).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.location.as_deref(), Some("/whip/resource/1/s"));
        assert_eq!(r.body, b"v=0");
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse(b"garbage").is_err());
        let chunked = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, b"abcde");
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab").is_err());
        let no_len = parse(b"HTTP/1.1 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(no_len.body, b"to the end");
    }
}
