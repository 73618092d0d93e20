//! Forwarding a WHIP/WHEP request to the node that owns its room.
//!
//! The receiving node sends the same method, path, `Authorization`, `Content-Type` and body
//! to the owner's advertised URL over HTTP/1.1, with [`FORWARDED_BY`] naming itself, and
//! hands the owner's answer back. A relative `Location` is made absolute on the owner's
//! public URL, so the client's `DELETE` reaches the node that holds the session. A request
//! that already carries [`FORWARDED_BY`] is never forwarded again (no loops).

use super::registry::NodeInfo;
use super::{Cluster, ClusterError};
use crate::http::{Request, Response, MAX_BODY};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// The header a forwarded request carries: the id of the node that forwarded it.
pub const FORWARDED_BY: &str = "sluice-forwarded-by";
/// The whole exchange with the owner (connect, request, answer) must fit in this.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Request headers that go to the owner as they came.
const PASSED: [&str; 3] = ["authorization", "content-type", "origin"];

/// What the owner answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    www_authenticate: Option<String>,
    body: Vec<u8>,
}

impl Cluster {
    /// Forward `req` to `owner` and return its answer.
    pub fn forward(&self, req: &Request, owner: &NodeInfo) -> Result<Response, ClusterError> {
        let fail = |message: String| ClusterError::Forward {
            node: owner.node_id.clone(),
            message,
        };
        let authority = owner
            .advertise_url
            .strip_prefix("http://")
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| {
                fail(format!(
                    "advertised URL `{}` is not http://HOST:PORT",
                    owner.advertise_url
                ))
            })?
            .to_string();
        let r = self.block_on(async {
            tokio::time::timeout(FORWARD_TIMEOUT, exchange(&authority, req, self.node_id()))
                .await
                .map_err(|_| format!("no answer within {} s", FORWARD_TIMEOUT.as_secs()))?
        });
        let a = match r {
            Ok(a) => a,
            Err(m) => {
                self.stats
                    .forwarded_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(fail(m));
            }
        };
        self.stats
            .forwarded_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut resp = match a.content_type.as_deref() {
            Some("application/sdp") => Response::text(
                a.status,
                "application/sdp",
                String::from_utf8_lossy(&a.body).into_owned(),
            ),
            Some(t) if t.starts_with("application/json") => {
                let mut r = Response::empty(a.status);
                r.content_type = "application/json";
                r.body = a.body;
                r
            }
            _ => {
                let mut r = Response::empty(a.status);
                r.content_type = "text/plain; charset=utf-8";
                r.body = a.body;
                r
            }
        };
        if let Some(l) = a.location {
            let l = if l.starts_with('/') {
                format!("{}{l}", owner.public_url.trim_end_matches('/'))
            } else {
                l
            };
            resp.headers.push(("Location", l));
        }
        if let Some(w) = a.www_authenticate {
            resp.headers.push(("WWW-Authenticate", w));
        }
        Ok(resp)
    }
}

/// One HTTP/1.1 exchange with `authority` (`HOST:PORT`).
async fn exchange(authority: &str, req: &Request, me: &str) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let path = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let mut b = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(path)
        .header("host", authority)
        .header(FORWARDED_BY, me);
    for name in PASSED {
        if let Some(v) = req.header(name) {
            b = b.header(name, v);
        }
    }
    let out = b
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| format!("request: {e}"))?;
    let resp = send
        .send_request(out)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = resp.status().as_u16();
    let content_type = header("content-type");
    let location = header("location");
    let www_authenticate = header("www-authenticate");
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("answer body: {e}"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(Answer {
        status,
        content_type: content_type.map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        }),
        location,
        www_authenticate,
        body,
    })
}
