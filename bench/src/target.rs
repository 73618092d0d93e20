//! The session-setup layer: what the bench asks of the system under test before sending.
//!
//! Owns: the [`Target`] trait (create the sessions and routes of a [`Plan`], tear them down)
//! and its Sluice implementation over the admin REST API, plus discovery of a running local
//! instance through `<runtime_dir>/control.json`. May not touch: media sockets, packets.
//!
//! A target may choose its own media addresses and keys (an rtpengine target answers an SDP
//! offer with a port per call leg and its own SDES keys), so [`Target::setup`] returns a
//! [`Wiring`]: where each publisher sends and which key each subscriber decrypts with.

use contract::srtp::{MasterKey, Profile};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::http::{AdminClient, HttpError};

/// Errors setting up or tearing down sessions.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{what}: HTTP {status}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Discovery(String),
    #[error("the admin API answered without {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Unsupported(&'static str),
    /// A WebRTC join or leave (signalling, ICE, DTLS) failed; the message names the endpoint.
    #[error("{0}")]
    Join(String),
}

/// One endpoint the bench will run, as a session on the target.
#[derive(Debug, Clone, Copy)]
pub struct SessionPlan {
    /// The bench socket's address (the session's peer).
    pub peer: SocketAddr,
    /// What the peer encrypts with (the target decrypts with it).
    pub rx_key: MasterKey,
    /// What the target encrypts with towards the peer.
    pub tx_key: MasterKey,
}

/// Everything one run needs on the target.
#[derive(Debug, Clone)]
pub struct Plan {
    pub profile: Profile,
    pub publishers: Vec<SessionPlan>,
    /// Subscribers and the index of the publisher each one receives.
    pub subscribers: Vec<(SessionPlan, usize)>,
    /// The SSRC publisher `i` sends with.
    pub publisher_ssrcs: Vec<u32>,
}

/// What the target decided.
#[derive(Debug, Clone, Default)]
pub struct Wiring {
    /// Where publisher `i` sends.
    pub publisher_dst: Vec<SocketAddr>,
    /// The key subscriber `j` decrypts with (usually the planned `tx_key`).
    pub subscriber_keys: Vec<MasterKey>,
    /// The key publisher `i` encrypts with, when the target negotiated one (DTLS-SRTP);
    /// empty: the planned `rx_key`.
    pub publisher_keys: Vec<MasterKey>,
}

/// The generator's sockets, lent to a target that runs ICE and DTLS on them itself
/// ([`Target::wants_endpoints`]).
#[derive(Debug)]
pub struct Endpoints {
    /// Each publisher's socket and the SSRC it sends with.
    pub publishers: Vec<(std::net::UdpSocket, u32)>,
    /// Each subscriber's socket and the index of the publisher it receives.
    pub subscribers: Vec<(std::net::UdpSocket, usize)>,
}

/// The ICE credentials of one session reached over ICE-TCP: the relay's ufrag and password
/// and the bench endpoint's ufrag.
#[derive(Clone)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
    pub remote_ufrag: String,
}

impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("remote_ufrag", &self.remote_ufrag)
            .finish_non_exhaustive()
    }
}

/// What the target decided for a plan reached over ICE-TCP.
#[derive(Debug, Clone)]
pub struct IceWiring {
    /// The relay's ICE-TCP address.
    pub tcp_addr: SocketAddr,
    pub publishers: Vec<IceCredentials>,
    pub subscribers: Vec<IceCredentials>,
    /// The key subscriber `j` decrypts with.
    pub subscriber_keys: Vec<MasterKey>,
}

/// Facts about the system under test, for the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TargetInfo {
    pub kind: String,
    pub media_addr: Option<String>,
    pub admin_url: Option<String>,
    pub backend: Option<String>,
    pub workers: Option<u64>,
    pub relay_pid: Option<u32>,
    pub version: Option<String>,
}

/// A system under test.
pub trait Target {
    /// Facts for the report.
    fn info(&mut self) -> Result<TargetInfo, TargetError>;
    /// Create the sessions and routes of `plan`; on error some may be left for
    /// [`Target::teardown`] (which [`Target::setup`] then calls).
    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError>;
    /// Create the sessions and routes of `plan`. On error, whatever was created is removed.
    fn setup(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        match self.create(plan) {
            Ok(w) => Ok(w),
            Err(e) => {
                // Best effort: the original error is the one worth reporting.
                let _ = self.teardown();
                Err(e)
            }
        }
    }
    /// Create the sessions and routes of `plan` as static sessions reached by ICE (each
    /// endpoint's ufrag in `ufrags`, publishers first), on the relay's ICE-TCP address
    /// `tcp_port` (`None`: the media port). On error, whatever was created is removed.
    fn setup_ice(
        &mut self,
        plan: &Plan,
        ufrags: &[String],
        tcp_port: Option<u16>,
    ) -> Result<IceWiring, TargetError> {
        let _ = (plan, ufrags, tcp_port);
        Err(TargetError::Unsupported(
            "this target has no ICE-TCP sessions (--transport tcp needs a Sluice target)",
        ))
    }
    /// Remove everything `setup` created. Idempotent; returns how many objects it removed.
    fn teardown(&mut self) -> Result<usize, TargetError>;
    /// Relay counters, if the target exposes them (included raw in the report).
    fn stats(&mut self) -> Option<Value> {
        None
    }
    /// Whether [`Target::create`] needs the generator's sockets (a WebRTC target does its
    /// handshakes on them); they are then lent with [`Target::lend_endpoints`] first.
    fn wants_endpoints(&self) -> bool {
        false
    }
    /// Take (clones of) the generator's sockets before [`Target::setup`].
    fn lend_endpoints(&mut self, _endpoints: Endpoints) {}
    /// A measured step's time to first media per subscriber (ns from the step's start;
    /// `None`: none came), which a WebRTC target reports with its joins.
    fn observe_first_media(&mut self, _first_media_ns: &[Option<u64>]) {}
    /// CPU seconds (user + system) the server's processes have used so far, when the target
    /// was told which they are (`webrtc --server-pid`); sampled around every measured step.
    fn server_cpu(&mut self) -> Option<crate::sys::CpuTimes> {
        None
    }
}

/// The discovery file written by a running `sluice-control`: the same record and the same
/// search order (`$SLUICE_RUNTIME_DIR`, then the default runtime directory) as `sluicectl`,
/// both from `contract::config`.
pub use contract::config::RuntimeInfo;

/// Read the first `control.json` among `contract::config::runtime_dir_candidates`.
pub fn discover() -> Result<RuntimeInfo, TargetError> {
    let Some(path) = RuntimeInfo::find_file() else {
        let looked: Vec<String> = contract::config::runtime_dir_candidates()
            .iter()
            .map(|d| RuntimeInfo::path_in(d).display().to_string())
            .collect();
        return Err(TargetError::Discovery(format!(
            "no running Sluice found (no {}); start one with `sluicectl up` or pass --api and --token",
            looked.join(" or ")
        )));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| TargetError::Discovery(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| TargetError::Discovery(format!("{}: {e}", path.display())))
}

/// A media address as the bench can send to it: an unspecified IP (`0.0.0.0`, `::`) becomes
/// loopback of the same family.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(v6) if v6.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// A running Sluice, driven through its admin API.
pub struct SluiceTarget {
    api: AdminClient,
    media: Option<SocketAddr>,
    sessions: Vec<u64>,
    routes: Vec<u64>,
}

impl SluiceTarget {
    /// Connect to `api` with `token`; either missing is taken from the discovery file.
    /// `media` overrides the relay address reported by the API.
    pub fn connect(
        api: Option<&str>,
        token: Option<&str>,
        media: Option<SocketAddr>,
    ) -> Result<SluiceTarget, TargetError> {
        let found = if api.is_none() || token.is_none() {
            Some(discover()?)
        } else {
            None
        };
        let url = api
            .map(str::to_string)
            .or_else(|| found.as_ref().map(|f| f.admin_url.clone()))
            .ok_or(TargetError::Missing("admin_url"))?;
        let token = token
            .map(str::to_string)
            .or_else(|| found.as_ref().map(|f| f.admin_token.clone()))
            .ok_or(TargetError::Missing("admin_token"))?;
        let media = media.or_else(|| found.as_ref().and_then(|f| f.media_addr.parse().ok()));
        Ok(SluiceTarget {
            api: AdminClient::new(&url, &token)?,
            media,
            sessions: Vec::new(),
            routes: Vec::new(),
        })
    }

    fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, TargetError> {
        let r = self.api.request(method, path, body)?;
        if !(200..300).contains(&r.status) {
            return Err(TargetError::Api {
                what: what.to_string(),
                status: r.status,
                message: crate::http::message(&r),
            });
        }
        Ok(crate::http::json(&r))
    }

    fn status(&self) -> Result<Value, TargetError> {
        self.call("GET /v1/status", "GET", "/v1/status", None)
    }

    /// The relay's CPU seconds (user + system) as its control reports them
    /// (`process_cpu_seconds_total{process="relay"}` on `/metrics`); `None` when the node
    /// does not answer or reports no relay.
    pub fn relay_cpu_seconds(&self) -> Option<f64> {
        let r = self.api.request("GET", "/metrics", None).ok()?;
        if r.status != 200 {
            return None;
        }
        relay_cpu_of(&String::from_utf8_lossy(&r.body))
    }

    /// The relay's media address as the bench reaches it.
    pub(crate) fn media_addr(&mut self) -> Result<SocketAddr, TargetError> {
        if let Some(m) = self.media {
            return Ok(reachable(m));
        }
        let s = self.status()?;
        let m: SocketAddr = s["media_addr"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .ok_or(TargetError::Missing("media_addr"))?;
        self.media = Some(m);
        Ok(reachable(m))
    }
}

impl SluiceTarget {
    /// `POST /v1/sessions` with `body`; the session is removed by [`Target::teardown`].
    pub(crate) fn add_session(&mut self, what: &str, body: &Value) -> Result<u64, TargetError> {
        let v = self.call(what, "POST", "/v1/sessions", Some(body))?;
        let id = v["id"].as_u64().ok_or(TargetError::Missing("session id"))?;
        self.sessions.push(id);
        Ok(id)
    }

    /// `POST /v1/routes` with `body`; the route is removed by [`Target::teardown`].
    pub(crate) fn add_route(&mut self, what: &str, body: &Value) -> Result<u64, TargetError> {
        let v = self.call(what, "POST", "/v1/routes", Some(body))?;
        let id = v["id"].as_u64().ok_or(TargetError::Missing("route id"))?;
        self.routes.push(id);
        Ok(id)
    }

    /// [`Target::setup_ice`] without the clean-up.
    fn create_ice(
        &mut self,
        plan: &Plan,
        ufrags: &[String],
        tcp_port: Option<u16>,
    ) -> Result<IceWiring, TargetError> {
        let media = self.media_addr()?;
        let tcp_addr = SocketAddr::new(media.ip(), tcp_port.unwrap_or(media.port()));
        let profile = plan.profile.name();
        if ufrags.len() != plan.publishers.len() + plan.subscribers.len() {
            return Err(TargetError::Missing("a ufrag per endpoint"));
        }
        let session = |this: &mut Self,
                       s: &SessionPlan,
                       ufrag: &str,
                       role: &str,
                       what: &str|
         -> Result<(u64, IceCredentials), TargetError> {
            let body = json!({
                "profile": profile,
                "rx_key": s.rx_key.to_base64(),
                "tx_key": s.tx_key.to_base64(),
                "role": role,
                "ice": {"remote_ufrag": ufrag},
            });
            let v = this.call(what, "POST", "/v1/sessions", Some(&body))?;
            let id = v["id"].as_u64().ok_or(TargetError::Missing("session id"))?;
            this.sessions.push(id);
            let field = |k: &'static str| {
                v["ice"][k]
                    .as_str()
                    .map(str::to_string)
                    .ok_or(TargetError::Missing(k))
            };
            Ok((
                id,
                IceCredentials {
                    ufrag: field("ufrag")?,
                    pwd: field("pwd")?,
                    remote_ufrag: ufrag.to_string(),
                },
            ))
        };
        let (pub_ufrags, sub_ufrags) = ufrags.split_at(plan.publishers.len());
        let mut pub_ids = Vec::with_capacity(plan.publishers.len());
        let mut publishers = Vec::with_capacity(plan.publishers.len());
        for (i, (p, u)) in plan.publishers.iter().zip(pub_ufrags).enumerate() {
            let (id, c) = session(
                self,
                p,
                u,
                "trunk",
                &format!("create publisher session {i}"),
            )?;
            pub_ids.push(id);
            publishers.push(c);
        }
        let mut subscribers = Vec::with_capacity(plan.subscribers.len());
        let mut sub_keys = Vec::with_capacity(plan.subscribers.len());
        for (j, ((s, from), u)) in plan.subscribers.iter().zip(sub_ufrags).enumerate() {
            let (id, c) = session(
                self,
                s,
                u,
                "viewer",
                &format!("create subscriber session {j}"),
            )?;
            let from_id = *pub_ids
                .get(*from)
                .ok_or(TargetError::Missing("publisher"))?;
            let body = json!({"from": from_id, "to": id});
            let v = self.call(
                &format!("create route {from_id}→{id}"),
                "POST",
                "/v1/routes",
                Some(&body),
            )?;
            self.routes
                .push(v["id"].as_u64().ok_or(TargetError::Missing("route id"))?);
            subscribers.push(c);
            sub_keys.push(s.tx_key);
        }
        Ok(IceWiring {
            tcp_addr,
            publishers,
            subscribers,
            subscriber_keys: sub_keys,
        })
    }
}

impl Target for SluiceTarget {
    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        let media = self.media_addr()?;
        let profile = plan.profile.name();
        let session = |this: &mut Self, s: &SessionPlan, what: &str| -> Result<u64, TargetError> {
            let body = json!({
                "peer": s.peer.to_string(),
                "profile": profile,
                "rx_key": s.rx_key.to_base64(),
                "tx_key": s.tx_key.to_base64(),
            });
            let v = this.call(what, "POST", "/v1/sessions", Some(&body))?;
            let id = v["id"].as_u64().ok_or(TargetError::Missing("session id"))?;
            this.sessions.push(id);
            Ok(id)
        };
        let mut pub_ids = Vec::with_capacity(plan.publishers.len());
        for (i, p) in plan.publishers.iter().enumerate() {
            pub_ids.push(session(self, p, &format!("create publisher session {i}"))?);
        }
        let mut sub_keys = Vec::with_capacity(plan.subscribers.len());
        for (j, (s, from)) in plan.subscribers.iter().enumerate() {
            let id = session(self, s, &format!("create subscriber session {j}"))?;
            let from_id = *pub_ids
                .get(*from)
                .ok_or(TargetError::Missing("publisher"))?;
            let body = json!({"from": from_id, "to": id});
            let v = self.call(
                &format!("create route {from_id}→{id}"),
                "POST",
                "/v1/routes",
                Some(&body),
            )?;
            self.routes
                .push(v["id"].as_u64().ok_or(TargetError::Missing("route id"))?);
            sub_keys.push(s.tx_key);
        }
        Ok(Wiring {
            publisher_dst: vec![media; plan.publishers.len()],
            subscriber_keys: sub_keys,
            publisher_keys: Vec::new(),
        })
    }

    fn setup_ice(
        &mut self,
        plan: &Plan,
        ufrags: &[String],
        tcp_port: Option<u16>,
    ) -> Result<IceWiring, TargetError> {
        match self.create_ice(plan, ufrags, tcp_port) {
            Ok(w) => Ok(w),
            Err(e) => {
                let _ = self.teardown();
                Err(e)
            }
        }
    }

    fn info(&mut self) -> Result<TargetInfo, TargetError> {
        let s = self.status()?;
        let media = self.media.map(|m| m.to_string());
        Ok(TargetInfo {
            kind: "sluice".into(),
            media_addr: media.or_else(|| s["media_addr"].as_str().map(str::to_string)),
            admin_url: Some(self.api.url().to_string()),
            backend: s["backend"].as_str().map(str::to_string),
            workers: s["workers"].as_u64(),
            relay_pid: s["relay"]["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok()),
            version: s["version"].as_str().map(str::to_string),
        })
    }

    fn teardown(&mut self) -> Result<usize, TargetError> {
        let mut removed = 0;
        let mut first_err = None;
        let routes = std::mem::take(&mut self.routes);
        let sessions = std::mem::take(&mut self.sessions);
        for (kind, ids) in [("routes", routes), ("sessions", sessions)] {
            for id in ids.into_iter().rev() {
                match self
                    .api
                    .request("DELETE", &format!("/v1/{kind}/{id}"), None)
                {
                    Ok(r) if (200..300).contains(&r.status) => removed += 1,
                    // Already gone (deleting a session also removes its routes).
                    Ok(r) if r.status == 404 => {}
                    Ok(r) => {
                        first_err.get_or_insert(TargetError::Api {
                            what: format!("DELETE /v1/{kind}/{id}"),
                            status: r.status,
                            message: crate::http::message(&r),
                        });
                    }
                    Err(e) => {
                        first_err.get_or_insert(e.into());
                    }
                }
            }
        }
        match first_err {
            None => Ok(removed),
            Some(e) => Err(e),
        }
    }

    fn stats(&mut self) -> Option<Value> {
        self.call("GET /v1/stats", "GET", "/v1/stats", None).ok()
    }
}

/// `process_cpu_seconds_total{process="relay"}` in a Prometheus text exposition.
fn relay_cpu_of(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix("process_cpu_seconds_total{process=\"relay\"} ")
            .and_then(|v| v.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_cpu_is_read_from_metrics() {
        let text = "# TYPE process_cpu_seconds_total counter\n\
            process_cpu_seconds_total{process=\"control\"} 1.5e0\n\
            process_cpu_seconds_total{process=\"relay\"} 2.25e1\n";
        assert_eq!(relay_cpu_of(text), Some(22.5));
        assert_eq!(
            relay_cpu_of("process_cpu_seconds_total{process=\"control\"} 1\n"),
            None
        );
    }

    #[test]
    fn unspecified_becomes_loopback() {
        assert_eq!(
            reachable("0.0.0.0:5000".parse().unwrap()),
            "127.0.0.1:5000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:5000".parse().unwrap()),
            "[::1]:5000".parse::<SocketAddr>().unwrap()
        );
        let a: SocketAddr = "10.0.0.1:9".parse().unwrap();
        assert_eq!(reachable(a), a);
    }

    #[test]
    fn runtime_info_is_the_relay_record() {
        let r: RuntimeInfo = serde_json::from_str(
            r#"{"admin_url":"unix:/x","admin_token":"t","media_addr":"127.0.0.1:4000","public_url":"","metrics_url":"","pid":5,"shm_path":"/dev/shm/sluice"}"#,
        )
        .unwrap();
        assert_eq!(r.media_addr, "127.0.0.1:4000");
        assert_eq!(r.admin_token, "t");
    }
}
