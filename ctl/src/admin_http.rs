//! A tiny blocking HTTP/1.1 client for control's loopback admin API, shared by `sluicectl` and
//! `sluice-bench` (which find the API through [`contract::config::RuntimeInfo`]).
//!
//! Owns: one request per connection (`Connection: close`) over TCP (`http://HOST:PORT`) or a
//! unix socket (`unix:/path/to.sock`), `Content-Length` and chunked response bodies
//! (RFC 9112 §6, §7.1). No TLS, no redirects, no keep-alive: the admin API listens on loopback
//! or a unix socket only, so a full client crate (and its TLS stack) would be dead weight.
//! May not touch: anything but the socket it opens.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// How long to wait for the TCP connection to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait for the complete response.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Refuse responses larger than this (the admin API answers with small JSON documents).
const MAX_RESPONSE: usize = 64 << 20;

/// Why a request produced no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad admin URL {0:?}: expected http://HOST:PORT or unix:/PATH")]
    BadUrl(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr}: {err}")]
    Connect {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("connect to unix socket {}: {err}", .path.display())]
    ConnectUnix { path: PathBuf, err: std::io::Error },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

/// A parsed `http://host:port[/prefix]` or `unix:/path` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `host:port` as written (IPv6 in brackets), used for the `Host` header and to connect;
    /// `localhost` for a unix socket.
    pub authority: String,
    /// Path prefix without a trailing slash (usually empty).
    pub prefix: String,
    /// The unix socket to connect to instead of `authority`.
    pub unix: Option<PathBuf>,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, HttpError> {
        let bad = || HttpError::BadUrl(url.to_string());
        if let Some(path) = url.trim().strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            return Ok(BaseUrl {
                authority: "localhost".to_string(),
                prefix: String::new(),
                unix: Some(PathBuf::from(path)),
            });
        }
        let rest = url.trim().strip_prefix("http://").ok_or_else(bad)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad());
        }
        // Default port 80 if none is given; "[v6]" alone has no port either.
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(BaseUrl {
            authority,
            prefix: prefix.to_string(),
            unix: None,
        })
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Send one request and read the whole response.
pub fn request(
    base: &BaseUrl,
    method: &str,
    path_and_query: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    if let Some(path) = &base.unix {
        let stream = UnixStream::connect(path).map_err(|err| HttpError::ConnectUnix {
            path: path.clone(),
            err,
        })?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        return exchange(stream, base, method, path_and_query, token, body);
    }
    let addr = base
        .authority
        .to_socket_addrs()
        .map_err(|_| HttpError::Resolve(base.authority.clone()))?
        .next()
        .ok_or_else(|| HttpError::Resolve(base.authority.clone()))?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|err| HttpError::Connect { addr, err })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange(stream, base, method, path_and_query, token, body)
}

/// Write the request on a connected stream and read the response until the server closes.
fn exchange(
    mut stream: impl Read + Write,
    base: &BaseUrl,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: sluice/{}\r\n",
        base.prefix,
        base.authority,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or(&[]);
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()?;

    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw)?;
    if raw.len() > MAX_RESPONSE {
        return Err(HttpError::Malformed("response too large"));
    }
    parse_response(&raw)
}

/// Parse a complete HTTP/1.1 response (the server closed the connection after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let end = find(raw, b"\r\n\r\n").ok_or(HttpError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| HttpError::Malformed("headers"))?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::Malformed("no status line"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = content_length {
        if rest.len() < n {
            return Err(HttpError::Malformed("body shorter than Content-Length"));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

/// Decode a chunked body (RFC 9112 §7.1); trailers are ignored.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or(HttpError::Malformed("chunk size line"))?;
        let line = std::str::from_utf8(&data[..eol])
            .map_err(|_| HttpError::Malformed("chunk size line"))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_str, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(HttpError::Malformed("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.prefix, "");
        let u = BaseUrl::parse("http://[::1]:9/admin/").unwrap();
        assert_eq!(u.authority, "[::1]:9");
        assert_eq!(u.prefix, "/admin");
        assert_eq!(
            BaseUrl::parse("http://[::1]").unwrap().authority,
            "[::1]:80"
        );
        assert!(BaseUrl::parse("https://x:1").is_err());
        assert!(BaseUrl::parse("http:///x").is_err());
        let u = BaseUrl::parse("unix:/run/x.sock").unwrap();
        assert_eq!(u.unix.as_deref(), Some(std::path::Path::new("/run/x.sock")));
        assert!(BaseUrl::parse("unix:relative.sock").is_err());
    }

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2;x=y\r\n\"}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{\"a\"}"[..]));
        let r = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
