//! WebRTC signaling on control's HTTP listeners: WHIP (`POST /whip/…`) and WHEP
//! (`POST /whep/…`) with their resources (`DELETE`), CORS, the `/demo` page and its
//! loopback-only token endpoint, and the admin API for applications, developer keys, rooms
//! and tokens (`/v1/apps`, `/v1/rooms`, `/v1/tokens`).
//!
//! Owns: the application registry with its master secret ([`Apps`], `<state_dir>/apps.json`),
//! the table of WebRTC participants ([`Member`]), token checks at the door (401/403 with a
//! JSON reason and an audit entry), and turning an offer into a session, ICE credentials,
//! DTLS state and routes. May not touch: sockets, the packet path, DTLS records (the slow
//! path's [`crate::rtc::WebRtcDtls`] runs handshakes and calls [`KeyBinder`] back).
//!
//! A WebRTC session is written to shm at once, `PENDING`, with an unspecified peer address
//! and throw-away keys (the relay neither indexes nor sends to a pending session). ICE
//! nomination records the peer; DTLS completion writes the negotiated profile and keys;
//! the session leaves `PENDING` when both happened (see `ice_bind_peer` and `set_keys`).

use super::{commit, lock, shm_unavailable, Body, Control, StartError};
use crate::http::{Request, Response};
use crate::rtc::{KeyBinder, RtcEntry};
use crate::state::{Entry, RewriteSpec, StoredRoute, StoredSession};
use crate::util;
use crate::webrtc::apps::{MasterSecret, Registry};
use crate::webrtc::dtls::{Role as DtlsRole, SrtpKeys};
use crate::webrtc::sdp::{self, Endpoint, MediaKind, NegotiatedMedia, Offer, Setup};
use crate::webrtc::token::{
    self, Claims, Credential, DevKey, Intent, Limits, Role as TokenRole, RoomPolicy, Target,
    TokenError,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use contract::config::ControlConfig;
use contract::shm::{session_flags, Role};
use contract::srtp::{MasterKey, Profile};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The peer address of a WebRTC session before ICE nominated one.
pub const UNBOUND_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// Default lifetime of tokens minted by the admin API and the demo endpoint.
pub const DEFAULT_TOKEN_TTL: u64 = 3600;
/// The demo page (static, no external resources).
const DEMO_HTML: &str = include_str!("../../static/demo.html");

/// Applications and developer keys, sealed under the master secret, persisted atomically.
pub struct Apps {
    reg: Registry,
    master: MasterSecret,
    path: PathBuf,
}

impl Apps {
    /// Load (or create) the master secret and the registry; bootstrap the configured
    /// application with one generated key when no application exists.
    pub fn open(c: &ControlConfig) -> Result<Apps, StartError> {
        let err = |e: String| StartError::Apps(e);
        let master = locate_master(c).map_err(err)?;
        let path = c.state_dir.join("apps.json");
        let mut reg = Registry::load(&path).map_err(|e| err(e.to_string()))?;
        if reg.apps.is_empty() {
            if let Some(app) = &c.bootstrap_app {
                let now = util::unix_ms() / 1000;
                reg.add_app(app, now).map_err(|e| err(e.to_string()))?;
                reg.generate_key(app, "dev", &master, now)
                    .map_err(|e| err(e.to_string()))?;
                reg.save(&path).map_err(|e| err(e.to_string()))?;
                tracing::info!(app = %app, "created the bootstrap application with a generated developer key");
            }
        }
        Ok(Apps { reg, master, path })
    }

    fn save(&self) -> Result<(), Response> {
        self.reg
            .save(&self.path)
            .map_err(|e| Response::error(500, format!("could not persist applications: {e}")))
    }

    fn key(&self, app: &str, kid: Option<&str>) -> Option<DevKey> {
        self.reg.dev_key(app, kid, &self.master).ok().flatten()
    }
}

fn locate_master(c: &ControlConfig) -> Result<MasterSecret, String> {
    if let Some(p) = &c.master_key_file {
        return MasterSecret::load(p).map_err(|e| e.to_string());
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join("sluice-master-key");
        if p.exists() {
            return MasterSecret::load(&p).map_err(|e| e.to_string());
        }
    }
    let p = c.state_dir.join("master.key");
    if p.exists() {
        return MasterSecret::load(&p).map_err(|e| e.to_string());
    }
    let m = MasterSecret::generate().map_err(|e| e.to_string())?;
    util::ensure_private_dir(&c.state_dir).map_err(|e| e.to_string())?;
    util::write_private_atomic(&p, format!("{}\n", m.to_base64()).as_bytes())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    tracing::info!(path = %p.display(), "generated the master secret for developer keys");
    Ok(m)
}

/// One WebRTC participant (a WHIP publisher or a WHEP viewer).
#[derive(Debug, Clone)]
pub struct Member {
    pub session: u64,
    pub app: String,
    pub room: String,
    /// The role granted by the token.
    pub role: TokenRole,
    /// WHIP (true) or WHEP (false).
    pub publishes: bool,
    /// The negotiated media sections (codecs, extensions, SSRCs).
    pub media: Vec<NegotiatedMedia>,
    /// Per media section: the offerer's primary SSRCs (repair/FEC SSRCs of groups left out).
    pub primary_ssrcs: Vec<Vec<u32>>,
    /// Secret part of the resource URL (DELETE must present it).
    secret: String,
    /// Who holds the session, for the per-subject cap: the hashed token subject, or the
    /// hashed source address for stream tokens (which carry no subject).
    subject: String,
    /// When the offer was answered (Unix ms); an unbound session expires from here.
    created_ms: u64,
}

/// `*.denied` audit entries per second, and their burst: unauthenticated clients must not be
/// able to grow the audit log at will (every denial is still counted in `/metrics`).
pub const DENIED_AUDIT_RATE: u64 = 10;
pub const DENIED_AUDIT_BURST: u64 = 20;
/// How often a "denied entries suppressed" audit line is written (when some were).
pub const DENIED_SUPPRESSED_EVERY_MS: u64 = 10_000;

/// WebRTC signaling counters (for `/metrics`).
#[derive(Debug, Default)]
pub struct WebRtcStats {
    /// Sessions removed because ICE never nominated a peer in time.
    pub expired: std::sync::atomic::AtomicU64,
    /// Refused WHIP/WHEP requests by reason, and the rate limit of their audit entries.
    denied: std::sync::Mutex<DeniedLog>,
}

/// Token bucket (in thousandths of an entry) for `*.denied` audit entries.
#[derive(Debug, Default)]
struct DeniedLog {
    by_reason: std::collections::BTreeMap<&'static str, u64>,
    milli_tokens: u64,
    last_ms: u64,
    suppressed: u64,
    last_report_ms: u64,
}

impl DeniedLog {
    /// Count a denial; true when it may be audited.
    fn admit(&mut self, reason: &'static str, now_ms: u64) -> bool {
        *self.by_reason.entry(reason).or_default() += 1;
        if self.last_ms == 0 {
            self.milli_tokens = DENIED_AUDIT_BURST * 1000;
            self.last_ms = now_ms;
            self.last_report_ms = now_ms;
        }
        let refill = now_ms.saturating_sub(self.last_ms) * DENIED_AUDIT_RATE;
        self.milli_tokens = (self.milli_tokens + refill).min(DENIED_AUDIT_BURST * 1000);
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

impl Member {
    /// The resource URL path.
    pub fn location(&self) -> String {
        let kind = if self.publishes { "whip" } else { "whep" };
        format!("/{kind}/resource/{}/{}", self.session, self.secret)
    }
}

/// Routes from publisher `p` to viewer `v`. Each accepted publisher section takes the first
/// accepted viewer section of the same kind whose SSRC (announced in the viewer's answer) is
/// not in `used` — sections already fed by another publisher — and marks it used; so a
/// viewer that offers two video sections sees two publishers, in join order. One route per
/// primary SSRC (or one any-SSRC route when the publisher announced none), rewriting the
/// SSRC to the viewer section's, with payload types and extension ids mapped.
fn routes_between(p: &Member, v: &Member, used: &mut Vec<u32>) -> Vec<(Option<u32>, RewriteSpec)> {
    let mut out = Vec::new();
    for (i, pm) in p.media.iter().enumerate() {
        if !pm.accepted || !matches!(pm.kind, MediaKind::Audio | MediaKind::Video) {
            continue;
        }
        let Some(vm) = v.media.iter().find(|m| {
            m.accepted
                && m.kind == pm.kind
                && m.send_ssrc.is_some_and(|s| !used.contains(&s))
                && !sdp::pt_map(&pm.codecs, &m.codecs).is_empty()
        }) else {
            continue;
        };
        if let Some(s) = vm.send_ssrc {
            used.push(s);
        }
        let pt_map: Vec<[u8; 2]> = sdp::pt_map(&pm.codecs, &vm.codecs)
            .into_iter()
            .take(contract::shm::MAX_MAPPINGS)
            .map(|(a, b)| [a, b])
            .collect();
        if pt_map.is_empty() {
            continue;
        }
        let ext_map: Vec<[u8; 2]> = sdp::ext_map(&pm.extmaps, &vm.extmaps)
            .into_iter()
            .filter(|(a, b)| (1..=14).contains(a) && (1..=14).contains(b))
            .take(contract::shm::MAX_MAPPINGS)
            .map(|(a, b)| [a, b])
            .collect();
        let rw = RewriteSpec {
            ssrc: vm.send_ssrc,
            pt_map,
            ext_map,
        };
        let ssrcs = p.primary_ssrcs.get(i).cloned().unwrap_or_default();
        if ssrcs.is_empty() {
            out.push((None, rw));
        } else {
            for s in ssrcs {
                out.push((Some(s), rw.clone()));
            }
        }
    }
    out
}

fn primary_ssrcs(m: &sdp::Media) -> Vec<u32> {
    let secondary: Vec<u32> = m
        .ssrc_groups
        .iter()
        .filter(|g| g.semantics == "FID" || g.semantics == "FEC-FR")
        .flat_map(|g| g.ssrcs.iter().skip(1).copied())
        .collect();
    m.ssrc_list()
        .into_iter()
        .filter(|s| !secondary.contains(s))
        .collect()
}

fn random_u32() -> Result<u32, Response> {
    let b = util::random_bytes(4).map_err(|e| Response::error(500, format!("random: {e}")))?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 1)
}

fn random_hex(n: usize) -> Result<String, Response> {
    let b = util::random_bytes(n).map_err(|e| Response::error(500, format!("random: {e}")))?;
    Ok(util::hex(&b))
}

fn throwaway_key(p: Profile) -> Result<MasterKey, Response> {
    let b = util::random_bytes(p.key_material_len())
        .map_err(|e| Response::error(500, format!("random: {e}")))?;
    MasterKey::new(p, &b).map_err(|e| Response::error(500, format!("key: {e}")))
}

/// A stable name for a rejection (the `reason` field of the JSON body and the audit entry).
pub fn reason_code(e: &TokenError) -> &'static str {
    match e {
        TokenError::Malformed(_) => "malformed",
        TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
        TokenError::UnknownKey => "unknown_key",
        TokenError::BadSignature => "bad_signature",
        TokenError::Expired => "expired",
        TokenError::NotYetValid => "not_yet_valid",
        TokenError::IssuedInFuture => "issued_in_future",
        TokenError::LifetimeTooLong => "lifetime_too_long",
        TokenError::EmptyValidity => "empty_validity",
        TokenError::WrongApp => "wrong_app",
        TokenError::WrongRoom => "wrong_room",
        TokenError::RoleCannotPublish => "role_cannot_publish",
        TokenError::EmailDomainNotAllowed => "email_domain_not_allowed",
        TokenError::KindNotAccepted => "token_kind_not_accepted",
        TokenError::StreamTokenInvalid => "stream_token_invalid",
    }
}

/// 401 when the credential does not authenticate, 403 when it does but is not allowed here.
pub fn reason_status(e: &TokenError) -> u16 {
    match e {
        TokenError::WrongApp
        | TokenError::WrongRoom
        | TokenError::RoleCannotPublish
        | TokenError::EmailDomainNotAllowed
        | TokenError::KindNotAccepted => 403,
        _ => 401,
    }
}

fn peer_ip(req: &Request) -> Option<IpAddr> {
    let rest = req.peer.strip_prefix("tcp:")?;
    rest.parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

fn with_cors(mut r: Response, origin: &str) -> Response {
    r.headers
        .push(("Access-Control-Allow-Origin", origin.to_string()));
    r.headers
        .push(("Access-Control-Expose-Headers", "Location".into()));
    r
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Control {
    /// WHIP/WHEP are served on the admin listener too when no separate public one exists.
    pub(super) fn public_on_admin(&self) -> bool {
        self.cfg
            .control
            .public_listen
            .as_ref()
            .is_none_or(|p| *p == self.cfg.control.admin_listen)
    }

    /// The DTLS sink for the slow path (handshakes write keys back through `self`).
    pub fn dtls_sink(self: &std::sync::Arc<Self>) -> crate::rtc::WebRtcDtls {
        crate::rtc::WebRtcDtls::new(
            self.rtc.clone(),
            self.cert.clone(),
            self.clone(),
            crate::rtc::DtlsLimits::from_config(&self.cfg.control),
        )
    }

    /// Forget a session's ICE and DTLS state after it was deleted (the caller removed the
    /// member under the `members` lock before committing the deletion).
    pub(super) fn forget_rtc(&self, id: u64) {
        lock(&self.ice).remove(id);
        lock(&self.rtc).remove(id);
    }

    /// Remove the WebRTC sessions whose peer ICE has not nominated within
    /// `control.signaling_timeout_secs` of the answer (a client that never sends a
    /// connectivity check would otherwise hold its session and routes for ever). Each is
    /// audited `webrtc.expired` and counted. Returns how many went.
    pub fn expire_unbound_sessions(&self, now_ms: u64) -> usize {
        let timeout_ms = u64::from(self.cfg.control.signaling_timeout_secs) * 1000;
        let old: Vec<u64> = lock(&self.members)
            .values()
            .filter(|m| now_ms.saturating_sub(m.created_ms) >= timeout_ms)
            .map(|m| m.session)
            .collect();
        let mut n = 0;
        for id in old {
            // Checked again under the locks: ICE may have bound the peer meanwhile.
            let r = self.remove_member(id, true);
            if r.status == 200 {
                n += 1;
                self.webrtc_stats
                    .expired
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.audit(
                    "webrtc",
                    "webrtc.expired",
                    json!({"session": id, "after_secs": self.cfg.control.signaling_timeout_secs}),
                    &r,
                );
            }
        }
        n
    }

    /// Prometheus text for the WebRTC families (DTLS handshakes, participants).
    pub(super) fn webrtc_metrics(&self) -> String {
        use std::fmt::Write as _;
        let c = lock(&self.rtc).counters();
        let (pubs, views) = {
            let m = lock(&self.members);
            let p = m.values().filter(|x| x.publishes).count();
            (p, m.len() - p)
        };
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "# HELP sluice_control_dtls_handshakes_total DTLS-SRTP handshakes by outcome.\n\
             # TYPE sluice_control_dtls_handshakes_total counter\n\
             sluice_control_dtls_handshakes_total{{result=\"started\"}} {}\n\
             sluice_control_dtls_handshakes_total{{result=\"completed\"}} {}\n\
             sluice_control_dtls_handshakes_total{{result=\"failed\"}} {}\n\
             # HELP sluice_control_dtls_refused_total DTLS datagrams not used, by reason.\n\
             # TYPE sluice_control_dtls_refused_total counter\n\
             sluice_control_dtls_refused_total{{reason=\"handshake_cap\"}} {}\n\
             sluice_control_dtls_refused_total{{reason=\"unknown_peer\"}} {}\n\
             # HELP sluice_control_webrtc_participants WHIP publishers and WHEP viewers.\n\
             # TYPE sluice_control_webrtc_participants gauge\n\
             sluice_control_webrtc_participants{{kind=\"whip\"}} {pubs}\n\
             sluice_control_webrtc_participants{{kind=\"whep\"}} {views}\n\
             # HELP sluice_control_webrtc_expired_total WebRTC sessions removed because ICE never nominated a peer in time.\n\
             # TYPE sluice_control_webrtc_expired_total counter\n\
             sluice_control_webrtc_expired_total {}\n\
             # HELP sluice_control_webrtc_denied_total WHIP/WHEP requests refused at the token check, by reason.\n\
             # TYPE sluice_control_webrtc_denied_total counter\n",
            c.handshakes_started,
            c.handshakes_completed,
            c.handshakes_failed,
            c.refused_cap,
            c.unknown_peer,
            self.webrtc_stats
                .expired
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        for (reason, n) in &lock(&self.webrtc_stats.denied).by_reason {
            let _ = writeln!(
                s,
                "sluice_control_webrtc_denied_total{{reason=\"{reason}\"}} {n}"
            );
        }
        s
    }

    /// At start: WebRTC sessions that never got a peer (signaling state is in memory only,
    /// so their ICE and DTLS cannot complete any more) are removed with their routes.
    pub(super) fn drop_unbound_webrtc_sessions(&self) {
        let mut g = lock(&self.inner);
        if g.shm.is_none() {
            return;
        }
        let st = g.store.state();
        let dead: Vec<u64> = st
            .sessions
            .values()
            .filter(|s| s.peer == UNBOUND_PEER && s.flags & session_flags::PENDING != 0)
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return;
        }
        let mut entries: Vec<Entry> = st
            .routes
            .values()
            .filter(|r| dead.contains(&r.from) || dead.contains(&r.to))
            .map(|r| Entry::DelRoute { id: r.id })
            .collect();
        entries.extend(dead.iter().map(|&id| Entry::DelSession { id }));
        match commit(&mut g, entries) {
            Ok(()) => tracing::info!(
                sessions = dead.len(),
                "removed WebRTC sessions left unbound by a restart"
            ),
            Err(_) => tracing::warn!("could not remove WebRTC sessions left unbound by a restart"),
        }
    }

    /// Write one `webrtc.denied_suppressed` audit line with the number of `*.denied` entries
    /// the rate limit left out since the last one, at most every
    /// [`DENIED_SUPPRESSED_EVERY_MS`]. Returns that number (0: nothing written).
    pub fn report_suppressed_denials(&self, now_ms: u64) -> u64 {
        let n = {
            let mut d = lock(&self.webrtc_stats.denied);
            if d.suppressed == 0
                || now_ms.saturating_sub(d.last_report_ms) < DENIED_SUPPRESSED_EVERY_MS
            {
                return 0;
            }
            d.last_report_ms = now_ms;
            std::mem::take(&mut d.suppressed)
        };
        self.audit(
            "anonymous",
            "webrtc.denied_suppressed",
            json!({"count": n}),
            &Response::empty(200),
        );
        n
    }

    /// WebRTC participants (for the admin API and tests).
    pub fn members(&self) -> Vec<Member> {
        lock(&self.members).values().cloned().collect()
    }

    /// WHIP, WHEP, their resources, CORS preflight and the demo page; `None` for other paths.
    pub(super) fn handle_webrtc(&self, req: &Request) -> Option<Response> {
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let origin = self.cfg.control.cors_allow_origin.as_str();
        let m = req.method.as_str();
        let r = match (m, segs.as_slice()) {
            (_, ["demo"]) if self.demo_app().is_none() => return None,
            ("GET" | "HEAD", ["demo"]) => {
                return Some(Response::text(
                    200,
                    "text/html; charset=utf-8",
                    DEMO_HTML.to_string(),
                ))
            }
            // No CORS on /demo: only the page control serves itself may call it.
            ("POST", ["demo", "token"]) => return Some(self.demo_token(req)),
            ("OPTIONS", [kind @ ("whip" | "whep"), ..]) => {
                let mut r = Response::empty(204);
                r.headers.push((
                    "Access-Control-Allow-Methods",
                    "POST, DELETE, OPTIONS".into(),
                ));
                r.headers.push((
                    "Access-Control-Allow-Headers",
                    "Authorization, Content-Type".into(),
                ));
                r.headers.push(("Access-Control-Max-Age", "600".into()));
                if segs.len() <= 3 && segs.get(1) != Some(&"resource") {
                    r.headers.push(("Accept-Post", "application/sdp".into()));
                }
                let _ = kind;
                r
            }
            ("DELETE", ["whip" | "whep", "resource", id, secret]) => self.leave(id, secret),
            ("POST", [kind @ ("whip" | "whep"), rest @ ..]) if (1..=2).contains(&rest.len()) => {
                let (app, room) = match rest {
                    [room] => match self.default_app() {
                        Some(a) => (a, room.to_string()),
                        None => {
                            return Some(with_cors(
                                Response::error(
                                    404,
                                    "several applications exist: use /whip/{app}/{room}",
                                ),
                                origin,
                            ))
                        }
                    },
                    [app, room] => (app.to_string(), room.to_string()),
                    _ => return None,
                };
                self.join(req, *kind == "whip", &app, &room)
            }
            (_, ["whip" | "whep", ..]) => method_not_allowed_cors(),
            _ => return None,
        };
        Some(with_cors(r, origin))
    }

    /// The application `/whip/{room}` means: the bootstrap application when it exists, else
    /// the only application.
    fn default_app(&self) -> Option<String> {
        let a = lock(&self.apps);
        if let Some(b) = &self.cfg.control.bootstrap_app {
            if a.reg.app(b).is_some() {
                return Some(b.clone());
            }
        }
        (a.reg.apps.len() == 1)
            .then(|| a.reg.apps.keys().next().cloned())
            .flatten()
    }

    /// The application the demo page mints tokens for (the bootstrap application, when it
    /// exists and has a key).
    pub(super) fn demo_app(&self) -> Option<String> {
        let b = self.cfg.control.bootstrap_app.as_ref()?;
        let a = lock(&self.apps);
        a.reg
            .app(b)
            .is_some_and(|app| !app.keys.is_empty())
            .then(|| b.clone())
    }

    /// Whether `origin` (an `Origin` header) is control's own public origin: the scheme, host
    /// and port of the public URL (`localhost` stands for a loopback address there).
    fn own_origin(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let public = self
            .urls()
            .public_url
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if public.is_empty() {
            return false;
        }
        if origin == public {
            return true;
        }
        for lo in ["127.0.0.1", "[::1]"] {
            if let Some(port) = public.strip_prefix(&format!("http://{lo}")) {
                return origin == format!("http://localhost{port}");
            }
        }
        false
    }

    /// `POST /demo/token` `{"room", "role"}`: a short-lived viewer or speaker token for the
    /// bootstrap application, to loopback clients only. A cross-site page in the operator's
    /// browser must not get one: no CORS headers, a JSON body only (a "simple" cross-origin
    /// POST cannot send `application/json` without a preflight we never allow), and a
    /// present `Origin` must be control's own.
    fn demo_token(&self, req: &Request) -> Response {
        let Some(app) = self.demo_app().filter(|_| self.cfg.control.demo_tokens) else {
            return Response::error(404, "the demo token endpoint is disabled");
        };
        let json_body = req.header("content-type").is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        let refusal = if !peer_ip(req).is_some_and(|ip| ip.is_loopback()) {
            Some(Response::error(
                403,
                "demo tokens are minted for loopback clients only",
            ))
        } else if req.header("origin").is_some_and(|o| !self.own_origin(o)) {
            Some(Response::error(
                403,
                "demo tokens are minted for control's own demo page only",
            ))
        } else if !json_body {
            Some(Response::error(
                415,
                "the demo token request must be application/json",
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            self.audit(
                "demo",
                "demo.token",
                json!({"from": self.hasher.hash(&req.peer)}),
                &r,
            );
            return r;
        }
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(&req.body, &["room", "role"])?;
            let room = b.req_str("room")?.to_string();
            let role = match b.opt_str("role")? {
                None | Some("viewer") => TokenRole::Viewer,
                Some("speaker") => TokenRole::Speaker,
                Some(s) => {
                    return Err(Response::json(
                        403,
                        &json!({"error": format!("the demo mints viewer or speaker tokens, not `{s}`"),
                            "reason": "role_not_allowed"}),
                    ))
                }
            };
            self.mint(&app, &room, role, DEFAULT_TOKEN_TTL.min(600), None, "demo")
        })();
        let resp = r.unwrap_or_else(|e| e);
        self.audit("demo", "demo.token", json!({"app": app}), &resp);
        resp
    }

    /// Token checks as configured (`control.token_leeway_secs`, `token_max_lifetime_secs`).
    fn token_limits(&self) -> Limits {
        Limits {
            leeway_secs: self.cfg.control.token_leeway_secs,
            max_lifetime_secs: self.cfg.control.token_max_lifetime_secs,
        }
    }

    fn mint(
        &self,
        app: &str,
        room: &str,
        role: TokenRole,
        ttl: u64,
        email: Option<String>,
        sub: &str,
    ) -> Result<Response, Response> {
        if !valid_segment(room) {
            return Err(super::bad_field("room", "1..=64 of A-Z a-z 0-9 - _ ."));
        }
        let max = self.token_limits().max_lifetime_secs;
        if ttl == 0 || ttl > max {
            return Err(super::bad_field(
                "ttl_secs",
                format!("out of range 1..={max} (control.token_max_lifetime_secs)"),
            ));
        }
        let a = lock(&self.apps);
        if a.reg.app(app).is_none() {
            return Err(Response::error(
                404,
                format!("application `{app}` not found"),
            ));
        }
        let newest = a
            .reg
            .app(app)
            .and_then(|x| x.keys.iter().max_by_key(|k| k.created_unix))
            .map(|k| k.kid.clone());
        let Some(key) = newest.and_then(|kid| a.key(app, Some(&kid))) else {
            return Err(Response::error(
                409,
                format!("application `{app}` has no developer key"),
            ));
        };
        drop(a);
        let now = util::unix_ms() / 1000;
        let c = Claims {
            sub: sub.to_string(),
            app: app.to_string(),
            room: room.to_string(),
            role,
            exp: now + ttl,
            nbf: now,
            iat: now,
            email,
        };
        let t = token::mint(&key, &c);
        Ok(Response::json(
            201,
            &json!({"token": t, "app": app, "room": room, "role": role.name(), "exp": c.exp}),
        ))
    }

    fn deny(&self, kind: &str, app: &str, room: &str, req: &Request, e: &TokenError) -> Response {
        let code = reason_code(e);
        let audited = lock(&self.webrtc_stats.denied).admit(code, util::unix_ms());
        let mut r = Response::json(
            reason_status(e),
            &json!({"error": e.to_string(), "reason": code}),
        );
        if r.status == 401 {
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
        }
        if audited {
            self.audit(
                "anonymous",
                &format!("{kind}.denied"),
                json!({"app": app, "room": room, "reason": code, "from": self.hasher.hash(&req.peer)}),
                &r,
            );
        }
        r
    }

    /// `POST /whip/{app}/{room}` (publish) or `/whep/{app}/{room}` (watch).
    fn join(&self, req: &Request, publish: bool, app: &str, room: &str) -> Response {
        let kind = if publish { "whip" } else { "whep" };
        let intent = if publish {
            Intent::Publish
        } else {
            Intent::Subscribe
        };
        let Some(bearer) = req
            .header("authorization")
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            let e = TokenError::Malformed("missing bearer token");
            return self.deny(kind, app, room, req, &e);
        };
        if !valid_segment(app) || !valid_segment(room) {
            return Response::error(404, "bad application or room name");
        }
        let cred = if bearer.matches('.').count() == 2 {
            Credential::Signed(bearer)
        } else {
            Credential::Stream(bearer)
        };
        let now = util::unix_ms() / 1000;
        let grant = {
            let a = lock(&self.apps);
            let Some(policy) = a.reg.policy(app, room).cloned() else {
                drop(a);
                // An application we do not know: say so only as "wrong app" for signed
                // tokens that verify for another application.
                let e = match cred {
                    Credential::Signed(_) => TokenError::WrongApp,
                    Credential::Stream(_) => TokenError::StreamTokenInvalid,
                };
                let verified = match cred {
                    Credential::Signed(t) => {
                        let a = lock(&self.apps);
                        token::verify(
                            t,
                            |app, kid| a.key(app, kid),
                            now,
                            &Target { app, room, intent },
                            &RoomPolicy::default(),
                            &self.token_limits(),
                        )
                        .err()
                    }
                    Credential::Stream(_) => None,
                };
                return self.deny(kind, app, room, req, &verified.unwrap_or(e));
            };
            token::authorize(
                cred,
                |app, kid| a.key(app, kid),
                now,
                peer_ip(req),
                &Target { app, room, intent },
                &policy,
                &self.token_limits(),
            )
        };
        let grant = match grant {
            Ok(g) => g,
            Err(e) => return self.deny(kind, app, room, req, &e),
        };
        let ids = json!({"app": app, "room": room, "role": grant.role.name(),
            "sub": grant.sub.as_deref().map(|s| self.hasher.hash(s))});
        let subject = match &grant.sub {
            Some(s) => self.hasher.hash(&format!("sub:{s}")),
            None => self.hasher.hash(&format!(
                "ip:{}",
                peer_ip(req).map(|i| i.to_string()).unwrap_or_default()
            )),
        };
        let r = self.join_inner(req, publish, app, room, grant.role, subject);
        self.audit("webrtc", &format!("{kind}.join"), ids, &r);
        r
    }

    fn join_inner(
        &self,
        req: &Request,
        publish: bool,
        app: &str,
        room: &str,
        role: TokenRole,
        subject: String,
    ) -> Response {
        let r = (|| -> Result<Response, Response> {
            let text = std::str::from_utf8(&req.body)
                .map_err(|_| Response::error(400, "the SDP offer is not UTF-8"))?;
            let offer =
                Offer::parse(text).map_err(|e| Response::error(400, format!("SDP offer: {e}")))?;
            if self.is_draining() {
                return Err(Response::error(503, "control is draining"));
            }
            {
                let mut a = lock(&self.apps);
                let fresh = a.reg.room(app, room).is_none();
                a.reg
                    .join_room(app, room, util::unix_ms() / 1000)
                    .map_err(|e| Response::error(409, e.to_string()))?;
                if fresh {
                    a.save()?;
                }
            }
            let creds = crate::ice::generate_credentials()
                .map_err(|e| Response::error(500, e.to_string()))?;
            let media_port = self.cfg.relay.bind.port();
            let mut candidates: Vec<SocketAddr> = self
                .cfg
                .control
                .public_addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, media_port))
                .collect();
            if candidates.is_empty() {
                let ip = if self.cfg.relay.bind.ip().is_unspecified() {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    self.cfg.relay.bind.ip()
                };
                candidates.push(SocketAddr::new(ip, media_port));
            }
            let mut send_ssrcs = Vec::new();
            if !publish {
                for _ in 0..offer.media.len() {
                    send_ssrcs.push(random_u32()?);
                }
            }
            let cfg = sdp::AnswerConfig {
                ice_ufrag: creds.ufrag.clone(),
                ice_pwd: creds.pwd.clone(),
                fingerprint: self.cert.fingerprint().clone(),
                candidates,
                session_id: u64::from(random_u32()?),
                send_ssrcs,
                cname: format!("sluice-{}", random_hex(6)?),
            };
            let endpoint = if publish {
                Endpoint::Whip
            } else {
                Endpoint::Whep
            };
            let ans = sdp::answer(&offer, endpoint, &cfg)
                .map_err(|e| Response::error(400, format!("SDP offer: {e}")))?;
            let primary: Vec<Vec<u32>> = offer.media.iter().map(primary_ssrcs).collect();
            let shm_role = if publish {
                Role::from_name(role.name()).unwrap_or(Role::Speaker)
            } else {
                Role::Viewer
            };
            let profile = Profile::AeadAes128Gcm;
            let mut members = lock(&self.members);
            let in_room = members.values().filter(|m| m.app == app && m.room == room);
            let (mut room_n, mut subject_n) = (0u32, 0u32);
            for m in in_room {
                room_n += 1;
                subject_n += u32::from(m.subject == subject);
            }
            if subject_n >= self.cfg.control.max_sessions_per_subject {
                return Err(Response::json(
                    429,
                    &json!({"error": format!("this subject already holds {subject_n} sessions in the room"),
                        "reason": "too_many_sessions"}),
                ));
            }
            if room_n >= self.cfg.control.max_sessions_per_room {
                return Err(Response::json(
                    403,
                    &json!({"error": format!("the room is full ({room_n} sessions)"),
                        "reason": "room_full"}),
                ));
            }
            let mut g = lock(&self.inner);
            let shm = g.shm.as_ref().ok_or_else(|| shm_unavailable(&g))?;
            if shm.session_count() >= shm.capacity().sessions as usize {
                return Err(Response::error(503, "session table is full"));
            }
            let id = g.store.state().next_session_id;
            let member = Member {
                session: id,
                app: app.to_string(),
                room: room.to_string(),
                role,
                publishes: publish,
                media: ans.media.clone(),
                primary_ssrcs: primary,
                secret: random_hex(16)?,
                subject,
                created_ms: util::unix_ms(),
            };
            let s = StoredSession {
                id,
                peer: UNBOUND_PEER,
                profile: profile.name().to_string(),
                role: shm_role.name().to_string(),
                rx_key: throwaway_key(profile)?.to_base64(),
                tx_key: throwaway_key(profile)?.to_base64(),
                key_epoch: 0,
                flags: session_flags::PENDING,
                max_pps: 0,
                created_unix_ms: util::unix_ms(),
            };
            let mut entries = vec![Entry::PutSession { session: s }];
            let mut next_route = g.store.state().next_route_id;
            // A new viewer fills its sections from the publishers in join order; a new
            // publisher takes, per viewer, sections no other publisher feeds.
            let mut used_by_new_viewer = Vec::new();
            for other in members.values() {
                if other.app != app || other.room != room || other.publishes == publish {
                    continue;
                }
                let mut used_in_viewer: Vec<u32> = g
                    .store
                    .state()
                    .routes
                    .values()
                    .filter(|r| r.to == other.session)
                    .filter_map(|r| r.rewrite.ssrc)
                    .collect();
                let (p, v, used) = if publish {
                    (&member, other, &mut used_in_viewer)
                } else {
                    (other, &member, &mut used_by_new_viewer)
                };
                for (ssrc, rewrite) in routes_between(p, v, used) {
                    entries.push(Entry::PutRoute {
                        route: StoredRoute {
                            id: next_route,
                            from: p.session,
                            ssrc,
                            to: v.session,
                            rewrite,
                        },
                    });
                    next_route += 1;
                }
            }
            let free = shm.capacity().routes as usize - shm.route_count();
            if entries.len() - 1 > free {
                return Err(Response::error(503, "route table is full"));
            }
            {
                let mut ice = lock(&self.ice);
                ice.add_credentials(
                    id,
                    &creds.ufrag,
                    &creds.pwd,
                    &ans.remote_ufrag,
                    Some(&ans.remote_pwd),
                )
                .map_err(|e| Response::error(400, format!("ICE credentials: {e}")))?;
            }
            if let Err(e) = commit(&mut g, entries) {
                lock(&self.ice).remove(id);
                return Err(e);
            }
            drop(g);
            let dtls_role = if ans.setup == Setup::Active {
                DtlsRole::Client
            } else {
                DtlsRole::Server
            };
            lock(&self.rtc).insert(id, RtcEntry::new(dtls_role, ans.remote_fingerprint.clone()));
            let location = member.location();
            members.insert(id, member);
            let mut r = Response::text(201, "application/sdp", ans.sdp);
            r.headers.push(("Location", location));
            Ok(r)
        })();
        r.unwrap_or_else(|e| e)
    }

    /// `DELETE` on a WHIP/WHEP resource: the participant leaves (session and routes go).
    fn leave(&self, id: &str, secret: &str) -> Response {
        let Ok(id) = id.parse::<u64>() else {
            return Response::error(404, "no such resource");
        };
        let known = lock(&self.members)
            .get(&id)
            .is_some_and(|m| util::ct_eq(m.secret.as_bytes(), secret.as_bytes()));
        if !known {
            return Response::error(404, "no such resource");
        }
        let r = self.remove_member(id, false);
        self.audit("webrtc", "webrtc.leave", json!({"session": id}), &r);
        r
    }

    /// Delete a participant's session with its routes, then forget its WebRTC state. With
    /// `only_unbound`, nothing happens (409) unless the session is still pending without a
    /// peer. Locks are taken in the order `join_inner` takes them (`members`, then `inner`)
    /// and the member leaves `members` before the deletion commits, so a concurrent join
    /// never routes to a session that is gone.
    fn remove_member(&self, id: u64, only_unbound: bool) -> Response {
        let mut members = lock(&self.members);
        let mut g = lock(&self.inner);
        if g.shm.is_none() {
            return shm_unavailable(&g);
        }
        let st = g.store.state();
        if only_unbound
            && st
                .sessions
                .get(&id)
                .is_some_and(|s| s.peer != UNBOUND_PEER || s.flags & session_flags::PENDING == 0)
        {
            return Response::error(409, format!("session {id} is bound"));
        }
        let mut entries: Vec<Entry> = st
            .routes
            .values()
            .filter(|r| r.from == id || r.to == id)
            .map(|r| Entry::DelRoute { id: r.id })
            .collect();
        if st.sessions.contains_key(&id) {
            entries.push(Entry::DelSession { id });
        }
        let removed = members.remove(&id);
        if let Err(e) = commit(&mut g, entries) {
            if let Some(m) = removed {
                members.insert(id, m);
            }
            return e;
        }
        drop(g);
        drop(members);
        self.forget_rtc(id);
        Response::empty(200)
    }

    // ---- admin API: /v1/apps, /v1/rooms, /v1/tokens ----

    /// Admin requests under `/v1/apps`, `/v1/rooms` and `/v1/tokens` (`segs` start there).
    pub(super) fn handle_apps_api(&self, m: &str, segs: &[&str], req: &Request) -> Response {
        let (action, ids, r) = match (m, segs) {
            ("GET" | "HEAD", ["apps"]) => return self.list_apps(),
            ("POST", ["apps"]) => {
                let r = self.create_app(req);
                let id = serde_json::from_slice::<Value>(&req.body)
                    .ok()
                    .and_then(|v| {
                        v["id"]
                            .as_str()
                            .filter(|s| valid_segment(s))
                            .map(str::to_string)
                    });
                ("app.create", json!({ "app": id }), r)
            }
            ("DELETE", ["apps", id]) => {
                let r = self.delete_app(id);
                ("app.delete", json!({"app": id}), r)
            }
            ("GET" | "HEAD", ["apps", id, "keys"]) => return self.list_keys(id),
            ("POST", ["apps", id, "keys"]) => {
                let r = self.create_key(id, req);
                ("key.create", json!({"app": id}), r)
            }
            ("DELETE", ["apps", id, "keys", kid]) => {
                let r = self.delete_key(id, kid);
                ("key.delete", json!({"app": id, "kid": kid}), r)
            }
            ("GET" | "HEAD", ["rooms"]) => return self.list_rooms(),
            ("GET" | "HEAD", ["rooms", app, room]) => return self.get_room(app, room),
            ("PUT" | "POST", ["rooms", app, room]) => {
                let r = self.put_room(app, room, req);
                ("room.policy", json!({"app": app, "room": room}), r)
            }
            ("DELETE", ["rooms", app, room]) => {
                let r = self.delete_room(app, room);
                ("room.delete", json!({"app": app, "room": room}), r)
            }
            ("POST", ["tokens"]) => {
                let r = self.mint_api(req);
                ("token.mint", json!({}), r)
            }
            (_, ["apps" | "rooms"]) => return super::method_not_allowed("GET, POST"),
            _ => return Response::error(404, format!("no such endpoint: {}", req.path)),
        };
        self.audit("admin", action, ids, &r);
        r
    }

    fn list_apps(&self) -> Response {
        let a = lock(&self.apps);
        let v: Vec<Value> = a
            .reg
            .apps
            .iter()
            .map(|(id, app)| {
                json!({"id": id, "created_unix": app.created_unix,
                    "keys": app.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
                    "rooms": app.rooms.len(), "default_policy": app.default_policy})
            })
            .collect();
        Response::json(200, &json!({ "apps": v }))
    }

    fn create_app(&self, req: &Request) -> Response {
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(&req.body, &["id", "policy"])?;
            let id = b.req_str("id")?.to_string();
            let policy = match b.0.get("policy") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    serde_json::from_value::<RoomPolicy>(v.clone())
                        .map_err(|e| super::bad_field("policy", e))?,
                ),
            };
            let mut a = lock(&self.apps);
            let now = util::unix_ms() / 1000;
            a.reg
                .add_app(&id, now)
                .map_err(|e| Response::error(409, e.to_string()))?;
            if let Some(p) = policy {
                let _ = a.reg.set_default_policy(&id, p);
            }
            let Apps { reg, master, .. } = &mut *a;
            let k = reg
                .generate_key(&id, "k1", master, now)
                .map_err(|e| Response::error(500, e.to_string()))?;
            a.save()?;
            Ok(Response::json(
                201,
                &json!({"id": id, "key": {"kid": k.kid(), "secret": URL_SAFE_NO_PAD.encode(k.secret())}}),
            ))
        })();
        r.unwrap_or_else(|e| e)
    }

    fn delete_app(&self, id: &str) -> Response {
        let r = (|| -> Result<Response, Response> {
            {
                let mut a = lock(&self.apps);
                a.reg
                    .remove_app(id)
                    .map_err(|e| Response::error(404, e.to_string()))?;
                a.save()?;
            }
            let gone: Vec<u64> = lock(&self.members)
                .values()
                .filter(|m| m.app == id)
                .map(|m| m.session)
                .collect();
            for s in gone {
                self.remove_member(s, false);
            }
            Ok(Response::empty(204))
        })();
        r.unwrap_or_else(|e| e)
    }

    fn list_keys(&self, id: &str) -> Response {
        let a = lock(&self.apps);
        let Some(app) = a.reg.app(id) else {
            return Response::error(404, format!("application `{id}` not found"));
        };
        let v: Vec<Value> = app
            .keys
            .iter()
            .map(|k| json!({"kid": k.kid, "created_unix": k.created_unix}))
            .collect();
        Response::json(200, &json!({ "app": id, "keys": v }))
    }

    fn create_key(&self, id: &str, req: &Request) -> Response {
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(
                if req.body.is_empty() {
                    b"{}"
                } else {
                    &req.body
                },
                &["kid", "secret"],
            )?;
            let mut a = lock(&self.apps);
            let Some(app) = a.reg.app(id) else {
                return Err(Response::error(
                    404,
                    format!("application `{id}` not found"),
                ));
            };
            let kid = match b.opt_str("kid")? {
                Some(k) => k.to_string(),
                None => format!("k{}", app.keys.len() + 1),
            };
            let now = util::unix_ms() / 1000;
            let Apps { reg, master, .. } = &mut *a;
            let key = match b.opt_str("secret")? {
                Some(s) => {
                    let mut raw = URL_SAFE_NO_PAD
                        .decode(s.trim_end_matches('='))
                        .map_err(|_| super::bad_field("secret", "not base64url"))?;
                    let k = DevKey::new(&kid, &raw);
                    // The key material is in `k` now; do not leave a copy in freed memory.
                    raw.fill(0);
                    std::hint::black_box(&raw);
                    let k = k.map_err(|e| super::bad_field("secret", e))?;
                    reg.add_key(id, &k, master, now)
                        .map_err(|e| Response::error(409, e.to_string()))?;
                    k
                }
                None => reg
                    .generate_key(id, &kid, master, now)
                    .map_err(|e| Response::error(409, e.to_string()))?,
            };
            a.save()?;
            Ok(Response::json(
                201,
                &json!({"app": id, "kid": key.kid(), "secret": URL_SAFE_NO_PAD.encode(key.secret())}),
            ))
        })();
        r.unwrap_or_else(|e| e)
    }

    fn delete_key(&self, id: &str, kid: &str) -> Response {
        let mut a = lock(&self.apps);
        if let Err(e) = a.reg.remove_key(id, kid) {
            return Response::error(404, e.to_string());
        }
        match a.save() {
            Ok(()) => Response::empty(204),
            Err(r) => r,
        }
    }

    fn room_members(&self, app: &str, room: &str) -> Vec<Value> {
        lock(&self.members)
            .values()
            .filter(|m| m.app == app && m.room == room)
            .map(|m| {
                json!({"session": m.session, "role": m.role.name(),
                    "kind": if m.publishes { "whip" } else { "whep" }})
            })
            .collect()
    }

    fn list_rooms(&self) -> Response {
        let a = lock(&self.apps);
        let mut v = Vec::new();
        for (app_id, app) in &a.reg.apps {
            for (name, r) in &app.rooms {
                v.push(
                    json!({"app": app_id, "room": name, "created_unix": r.created_unix,
                    "policy": app.policy_for(name)}),
                );
            }
        }
        drop(a);
        for r in &mut v {
            let (app, room) = (
                r["app"].as_str().unwrap_or_default().to_string(),
                r["room"].as_str().unwrap_or_default().to_string(),
            );
            r["members"] = json!(self.room_members(&app, &room).len());
        }
        Response::json(200, &json!({ "rooms": v }))
    }

    fn get_room(&self, app: &str, room: &str) -> Response {
        let a = lock(&self.apps);
        let Some(r) = a.reg.room(app, room) else {
            return Response::error(404, format!("room `{app}/{room}` not found"));
        };
        let created = r.created_unix;
        let policy = a.reg.policy(app, room).cloned().unwrap_or_default();
        drop(a);
        Response::json(
            200,
            &json!({"app": app, "room": room, "created_unix": created, "policy": policy,
                "members": self.room_members(app, room)}),
        )
    }

    /// `PUT` (or `POST`) `/v1/rooms/{app}/{room}` `{"policy": {...}|null}`: create the room, set its policy.
    fn put_room(&self, app: &str, room: &str, req: &Request) -> Response {
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(
                if req.body.is_empty() {
                    b"{}"
                } else {
                    &req.body
                },
                &["policy"],
            )?;
            let policy = match b.0.get("policy") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    serde_json::from_value::<RoomPolicy>(v.clone())
                        .map_err(|e| super::bad_field("policy", e))?,
                ),
            };
            let mut a = lock(&self.apps);
            a.reg
                .set_room_policy(app, room, policy, util::unix_ms() / 1000)
                .map_err(|e| Response::error(404, e.to_string()))?;
            a.save()?;
            let p = a.reg.policy(app, room).cloned().unwrap_or_default();
            Ok(Response::json(
                200,
                &json!({"app": app, "room": room, "policy": p}),
            ))
        })();
        r.unwrap_or_else(|e| e)
    }

    fn delete_room(&self, app: &str, room: &str) -> Response {
        {
            let mut a = lock(&self.apps);
            if let Err(e) = a.reg.remove_room(app, room) {
                return Response::error(404, e.to_string());
            }
            if let Err(r) = a.save() {
                return r;
            }
        }
        let gone: Vec<u64> = lock(&self.members)
            .values()
            .filter(|m| m.app == app && m.room == room)
            .map(|m| m.session)
            .collect();
        for s in gone {
            self.remove_member(s, false);
        }
        Response::empty(204)
    }

    /// `POST /v1/tokens` `{"app","room","role","ttl_secs"?,"email"?,"sub"?}`.
    fn mint_api(&self, req: &Request) -> Response {
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(
                &req.body,
                &["app", "room", "role", "ttl_secs", "email", "sub"],
            )?;
            let app = b.req_str("app")?.to_string();
            let room = b.req_str("room")?.to_string();
            let role_s = b.req_str("role")?;
            let role = TokenRole::from_name(role_s)
                .ok_or_else(|| super::bad_field("role", format!("unknown role `{role_s}`")))?;
            let ttl = match b.0.get("ttl_secs") {
                None | Some(Value::Null) => DEFAULT_TOKEN_TTL,
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| super::bad_field("ttl_secs", "not an integer"))?,
            };
            let email = b.opt_str("email")?.map(str::to_string);
            let sub = match b.opt_str("sub")? {
                Some(s) => s.to_string(),
                None => format!("user-{}", random_hex(6)?),
            };
            self.mint(&app, &room, role, ttl, email, &sub)
        })();
        r.unwrap_or_else(|e| e)
    }
}

fn method_not_allowed_cors() -> Response {
    let mut r = Response::error(405, "method not allowed");
    r.headers.push(("Allow", "POST, DELETE, OPTIONS".into()));
    r
}

impl KeyBinder for Control {
    fn set_keys(&self, session: u64, keys: &SrtpKeys) -> Result<(), String> {
        let nominated = lock(&self.ice).nominated(session);
        let ids = json!({"session": session, "profile": keys.profile.name()});
        let r = (|| -> Result<Response, Response> {
            let mut g = lock(&self.inner);
            let Some(old) = g.store.state().sessions.get(&session).cloned() else {
                return Err(Response::error(404, format!("session {session} not found")));
            };
            if g.shm.is_none() {
                return Err(shm_unavailable(&g));
            }
            let mut s = old;
            s.profile = keys.profile.name().to_string();
            s.rx_key = keys.rx.to_base64();
            s.tx_key = keys.tx.to_base64();
            s.key_epoch = s.key_epoch.wrapping_add(1);
            if let Some(p) = nominated {
                let taken = g
                    .store
                    .state()
                    .sessions
                    .values()
                    .any(|o| o.id != session && o.peer == p);
                if !taken {
                    s.peer = p;
                    s.flags &= !session_flags::PENDING;
                }
            }
            commit(&mut g, vec![Entry::PutSession { session: s }])?;
            Ok(Response::empty(204))
        })();
        let resp = r.unwrap_or_else(|e| e);
        self.audit("dtls", "webrtc.dtls_keys", ids, &resp);
        super::response_result(&resp)
    }

    fn dtls_failed(&self, session: u64, reason: &str) {
        let r = Response::error(401, reason.to_string());
        self.audit(
            "dtls",
            "webrtc.dtls_failed",
            json!({"session": session}),
            &r,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::token::mint_stream;
    use contract::config::{Config, Secret};
    use std::sync::Arc;

    const ADMIN: &str = "rtc-test-admin-token-0123456789";
    const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";
    const SECRET: [u8; 32] = [7; 32];

    struct Env {
        dir: PathBuf,
        shm: PathBuf,
        ctl: Arc<Control>,
    }

    impl Drop for Env {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.shm);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn env(name: &str) -> Env {
        env_with(name, "")
    }

    /// [`env`] with `extra` lines in the `[control]` section.
    fn env_with(name: &str, extra: &str) -> Env {
        let (dir, shm, cfg) = env_parts_with(name, extra);
        let ctl = Arc::new(Control::start(cfg, Secret::new(ADMIN)).unwrap());
        add_test_key(&ctl);
        Env { dir, shm, ctl }
    }

    /// A key whose secret the test knows.
    fn add_test_key(ctl: &Control) {
        let body = format!(
            r#"{{"kid":"t1","secret":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(SECRET)
        );
        let r = ctl.handle_admin(&req(
            "POST",
            "/v1/apps/demo/keys",
            Some(ADMIN),
            &body,
            "tcp:127.0.0.1:1",
        ));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    fn env_parts(name: &str) -> (PathBuf, PathBuf, Config) {
        env_parts_with(name, "")
    }

    /// `extra` is added to the `[control]` table.
    fn env_parts_with(name: &str, extra: &str) -> (PathBuf, PathBuf, Config) {
        let dir = std::env::temp_dir().join(format!("sluice-rtc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shm = PathBuf::from(format!("/dev/shm/sluice-rtc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&shm);
        let text = format!(
            "runtime_dir = \"{d}/run\"\n[relay]\nbind = \"127.0.0.1:40000\"\n[control]\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\naudit_log = \"{d}/log/audit.log\"\nbootstrap_app = \"demo\"\n{extra}\n[shm]\npath = \"{s}\"\nsessions = 16\nroutes = 64\nworker_slots = 2\n",
            d = dir.display(),
            s = shm.display()
        );
        let cfg = Config::from_toml_str(&text, "test").unwrap();
        std::fs::create_dir_all(&cfg.runtime_dir).unwrap();
        (dir, shm, cfg)
    }

    fn req(method: &str, path: &str, auth: Option<&str>, body: &str, peer: &str) -> Request {
        let mut headers = Vec::new();
        if let Some(a) = auth {
            headers.push(("authorization".to_string(), format!("Bearer {a}")));
        }
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers,
            body: body.as_bytes().to_vec(),
            peer: peer.into(),
        }
    }

    impl Env {
        fn admin(&self, method: &str, path: &str, body: &str) -> Response {
            self.ctl
                .handle_admin(&req(method, path, Some(ADMIN), body, "tcp:127.0.0.1:1"))
        }
        fn public(&self, method: &str, path: &str, tok: Option<&str>, body: &str) -> Response {
            self.public_from(method, path, tok, body, "tcp:127.0.0.1:5555")
        }
        fn public_from(
            &self,
            method: &str,
            path: &str,
            tok: Option<&str>,
            body: &str,
            peer: &str,
        ) -> Response {
            self.ctl.handle_public(&req(method, path, tok, body, peer))
        }
        fn audit(&self) -> String {
            std::fs::read_to_string(self.dir.join("log/audit.log")).unwrap_or_default()
        }
    }

    fn now() -> u64 {
        util::unix_ms() / 1000
    }

    fn claims(app: &str, room: &str, role: TokenRole) -> Claims {
        let n = now();
        Claims {
            sub: "alice".into(),
            app: app.into(),
            room: room.into(),
            role,
            exp: n + 600,
            nbf: n - 5,
            iat: n - 5,
            email: None,
        }
    }

    fn sign(c: &Claims) -> String {
        token::mint(&DevKey::new("t1", &SECRET).unwrap(), c)
    }

    fn offer(dir: &str, ssrc: u32) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:{FP}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na={dir}\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\na=ssrc-group:FID {ssrc} {r}\r\na=ssrc:{ssrc} cname:x\r\na=ssrc:{r} cname:x\r\n",
            r = ssrc + 1
        )
    }

    fn reason(r: &Response) -> String {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["reason"].as_str().unwrap_or_default().to_string()
    }

    fn body(r: &Response) -> String {
        String::from_utf8_lossy(&r.body).into_owned()
    }

    #[test]
    fn rejection_statuses() {
        assert_eq!(reason_status(&TokenError::Expired), 401);
        assert_eq!(reason_status(&TokenError::BadSignature), 401);
        assert_eq!(reason_status(&TokenError::StreamTokenInvalid), 401);
        assert_eq!(reason_status(&TokenError::WrongApp), 403);
        assert_eq!(reason_status(&TokenError::RoleCannotPublish), 403);
        assert_eq!(
            reason_code(&TokenError::EmailDomainNotAllowed),
            "email_domain_not_allowed"
        );
    }

    /// Every rejection: status, JSON reason, audit entry; nothing is created.
    #[test]
    fn every_token_rejection_is_401_or_403_with_reason_and_audit() {
        let e = env("reject");
        let whip = offer("sendonly", 1000);
        let whep = offer("recvonly", 2000);
        assert_eq!(e.admin("POST", "/v1/apps", r#"{"id":"other"}"#).status, 201);
        let n = now();
        let mut cases: Vec<(&str, String, &str, u16, &str)> = Vec::new();
        let mut c = claims("demo", "blue", TokenRole::Host);
        c.exp = n - 100;
        c.nbf = n - 200;
        c.iat = n - 200;
        cases.push(("/whip/demo/blue", sign(&c), &whip, 401, "expired"));
        let mut c = claims("demo", "blue", TokenRole::Host);
        c.nbf = n + 1000;
        c.exp = n + 2000;
        cases.push(("/whip/demo/blue", sign(&c), &whip, 401, "not_yet_valid"));
        let c = claims("demo", "blue", TokenRole::Host);
        cases.push(("/whip/other/blue", sign(&c), &whip, 403, "wrong_app"));
        cases.push(("/whip/demo/red", sign(&c), &whip, 403, "wrong_room"));
        let forged = token::mint(&DevKey::new("t1", &[9u8; 32]).unwrap(), &c);
        cases.push(("/whip/demo/blue", forged, &whip, 401, "bad_signature"));
        let v = claims("demo", "blue", TokenRole::Viewer);
        cases.push((
            "/whip/demo/blue",
            sign(&v),
            &whip,
            403,
            "role_cannot_publish",
        ));
        // Email domains (room policy).
        let r = e.admin(
            "PUT",
            "/v1/rooms/demo/vip",
            r#"{"policy":{"allowed_email_domains":["example.com"]}}"#,
        );
        assert_eq!(r.status, 200, "{}", body(&r));
        let mut v = claims("demo", "vip", TokenRole::Viewer);
        v.email = Some("eve@evil.test".into());
        cases.push((
            "/whep/demo/vip",
            sign(&v),
            &whep,
            403,
            "email_domain_not_allowed",
        ));
        // Storm md5 stream tokens bound to the viewer's IP.
        let r = e.admin(
            "PUT",
            "/v1/rooms/demo/legacy",
            r#"{"policy":{"accepted_token_kinds":["stream"],"stream_password":"pw","stream_timeout_minutes":5,"bind_ip":true}}"#,
        );
        assert_eq!(r.status, 200, "{}", body(&r));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        cases.push((
            "/whep/demo/legacy",
            "0".repeat(32),
            &whep,
            401,
            "stream_token_invalid",
        ));
        let stale = mint_stream("pw", n - 3600, Some(ip));
        cases.push((
            "/whep/demo/legacy",
            stale,
            &whep,
            401,
            "stream_token_invalid",
        ));
        // Signed tokens are not accepted in that room.
        let c = claims("demo", "legacy", TokenRole::Viewer);
        cases.push((
            "/whep/demo/legacy",
            sign(&c),
            &whep,
            403,
            "token_kind_not_accepted",
        ));
        for (path, tok, sdp, status, why) in &cases {
            let r = e.public("POST", path, Some(tok), sdp);
            assert_eq!(r.status, *status, "{why}: {}", body(&r));
            assert_eq!(reason(&r), *why, "{}", body(&r));
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| *k == "Access-Control-Allow-Origin" && v == "*"),
                "CORS on errors too"
            );
        }
        // No token at all.
        let r = e.public("POST", "/whip/demo/blue", None, &whip);
        assert_eq!(r.status, 401);
        // IP mismatch: the right token from another address.
        let good = mint_stream("pw", n, Some(ip));
        let r = e.public_from(
            "POST",
            "/whep/demo/legacy",
            Some(&good),
            &whep,
            "tcp:10.1.2.3:9",
        );
        assert_eq!(r.status, 401, "{}", body(&r));
        assert_eq!(reason(&r), "stream_token_invalid");
        // ... and accepted from the bound address.
        let r = e.public("POST", "/whep/demo/legacy", Some(&good), &whep);
        assert_eq!(r.status, 201, "{}", body(&r));
        let audit = e.audit();
        for (_, _, _, _, why) in &cases {
            assert!(
                audit.contains(&format!("\"reason\":\"{why}\"")),
                "audit lacks {why}"
            );
        }
        assert!(audit.contains("whip.denied") && audit.contains("whep.denied"));
        assert!(
            !audit.contains("eve@evil.test"),
            "no e-mail in the audit log"
        );
        // Only the accepted viewer became a session.
        assert_eq!(e.ctl.members().len(), 1);
    }

    /// WHIP then WHEP: answer, Location, routes publisher → viewer with the viewer's SSRC and
    /// payload types; the viewer is never a publisher in shm; DELETE and admin removal stop it.
    #[test]
    fn whip_whep_routes_and_removal() {
        let e = env("flow");
        let pub_tok = sign(&claims("demo", "blue", TokenRole::Host));
        let view_tok = sign(&claims("demo", "blue", TokenRole::Viewer));
        // CORS preflight.
        let r = e.public("OPTIONS", "/whip/blue", None, "");
        assert_eq!(r.status, 204);
        let h = |r: &Response, k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            h(&r, "Access-Control-Expose-Headers").as_deref(),
            Some("Location")
        );
        assert!(h(&r, "Access-Control-Allow-Headers")
            .unwrap()
            .contains("Authorization"));

        // `/whip/{room}` means the bootstrap application.
        let r = e.public(
            "POST",
            "/whip/blue",
            Some(&pub_tok),
            &offer("sendonly", 1000),
        );
        assert_eq!(r.status, 201, "{}", body(&r));
        assert_eq!(r.content_type, "application/sdp");
        let sdp = body(&r);
        for want in [
            "a=ice-lite",
            "a=group:BUNDLE 0",
            "a=rtcp-mux",
            "a=setup:passive",
            "a=recvonly",
            "a=candidate:1 1 udp",
            "127.0.0.1 40000 typ host",
            "a=fingerprint:sha-256 ",
        ] {
            assert!(sdp.contains(want), "answer lacks {want}: {sdp}");
        }
        let pub_loc = h(&r, "Location").unwrap();
        assert!(pub_loc.starts_with("/whip/resource/"));
        let r = e.public(
            "POST",
            "/whep/demo/blue",
            Some(&view_tok),
            &offer("recvonly", 2000),
        );
        assert_eq!(r.status, 201, "{}", body(&r));
        let sdp = body(&r);
        assert!(sdp.contains("a=sendonly"), "{sdp}");
        let send_ssrc: u32 = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=ssrc:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("WHEP answer announces our SSRC");
        let view_loc = h(&r, "Location").unwrap();

        let members = e.ctl.members();
        let p = members.iter().find(|m| m.publishes).unwrap().session;
        let v = members.iter().find(|m| !m.publishes).unwrap().session;
        let st = lock(&e.ctl.inner).store.state().clone();
        assert_eq!(st.sessions[&p].role, "host");
        assert_eq!(
            st.sessions[&v].role, "viewer",
            "a WHEP session never publishes"
        );
        assert!(st.sessions[&v].flags & session_flags::PENDING != 0);
        let routes: Vec<_> = st.routes.values().collect();
        assert_eq!(
            routes.len(),
            1,
            "primary SSRC only (RTX left out): {routes:?}"
        );
        assert_eq!((routes[0].from, routes[0].to), (p, v));
        assert_eq!(routes[0].ssrc, Some(1000));
        assert_eq!(routes[0].rewrite.ssrc, Some(send_ssrc));
        assert_eq!(routes[0].rewrite.pt_map, vec![[96, 96]]);

        let m = body(&e.admin("GET", "/metrics", ""));
        assert!(
            m.contains("sluice_control_webrtc_participants{kind=\"whep\"} 1"),
            "{m}"
        );
        assert!(m.contains("sluice_control_dtls_handshakes_total{result=\"failed\"} 0"));
        // The admin sees the room with both members.
        let r = e.admin("GET", "/v1/rooms/demo/blue", "");
        assert_eq!(r.status, 200);
        assert!(body(&r).contains("\"kind\":\"whep\""));

        // DELETE with a wrong secret is refused; the right one removes the viewer and routes.
        let bad = format!("{}x", view_loc);
        assert_eq!(e.public("DELETE", &bad, None, "").status, 404);
        assert_eq!(e.public("DELETE", &view_loc, None, "").status, 200);
        let st = lock(&e.ctl.inner).store.state().clone();
        assert!(st.routes.is_empty() && !st.sessions.contains_key(&v));

        // Moderator removal through the admin API.
        let r = e.admin("DELETE", &format!("/v1/sessions/{p}"), "");
        assert_eq!(r.status, 204, "{}", body(&r));
        assert!(e.ctl.members().is_empty());
        assert!(lock(&e.ctl.ice).is_empty());
        assert_eq!(e.public("DELETE", &pub_loc, None, "").status, 404);
    }

    #[test]
    fn restart_drops_sessions_that_never_bound() {
        let (dir, shm, cfg) = env_parts("restart");
        let first = Arc::new(Control::start(cfg.clone(), Secret::new(ADMIN)).unwrap());
        add_test_key(&first);
        let tok = sign(&claims("demo", "blue", TokenRole::Host));
        let r = first.handle_public(&req(
            "POST",
            "/whip/blue",
            Some(&tok),
            &offer("sendonly", 1),
            "tcp:127.0.0.1:2",
        ));
        assert_eq!(r.status, 201);
        assert_eq!(lock(&first.inner).store.state().sessions.len(), 1);
        drop(first); // shm and the journal are the instance's own until it goes
        let e = Env {
            dir,
            shm,
            ctl: Arc::new(Control::start(cfg, Secret::new(ADMIN)).unwrap()),
        };
        assert!(lock(&e.ctl.inner).store.state().sessions.is_empty());
    }

    /// One host candidate per public address, IPv4 and IPv6, on the media port.
    #[test]
    fn candidates_for_every_public_address() {
        let e = env_with(
            "cand",
            "public_addresses = [\"192.0.2.10\", \"2001:db8::10\"]",
        );
        let tok = sign(&claims("demo", "blue", TokenRole::Viewer));
        let r = e.public("POST", "/whep/blue", Some(&tok), &offer("recvonly", 7));
        assert_eq!(r.status, 201, "{}", body(&r));
        let sdp = body(&r);
        assert!(sdp.contains(" 192.0.2.10 40000 typ host"), "{sdp}");
        assert!(sdp.contains(" 2001:db8::10 40000 typ host"), "{sdp}");
        assert!(sdp.contains("a=end-of-candidates"));
    }

    /// A viewer that joined first gets routes when publishers arrive; two publishers fill the
    /// viewer's two video sections, one each; a third finds no free section.
    #[test]
    fn viewer_first_and_several_publishers() {
        let e = env("multi");
        let view_tok = sign(&claims("demo", "blue", TokenRole::Viewer));
        let two = offer("recvonly", 1)
            .replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1")
            .replace(
                "a=ssrc-group:FID 1 2\r\na=ssrc:1 cname:x\r\na=ssrc:2 cname:x\r\n",
                "",
            );
        let second = two
            .split("m=video")
            .nth(1)
            .unwrap()
            .replace("a=mid:0", "a=mid:1");
        let two = format!("{two}m=video{second}");
        let r = e.public("POST", "/whep/blue", Some(&view_tok), &two);
        assert_eq!(r.status, 201, "{}", body(&r));
        let ssrcs: Vec<u32> = body(&r)
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc:"))
            .filter(|l| l.contains("cname:"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(ssrcs.len(), 2, "{}", body(&r));
        for (i, ssrc) in [(0u32, 100u32), (1, 200), (2, 300)] {
            let tok = sign(&claims("demo", "blue", TokenRole::Speaker));
            let r = e.public("POST", "/whip/blue", Some(&tok), &offer("sendonly", ssrc));
            assert_eq!(r.status, 201, "publisher {i}: {}", body(&r));
        }
        let st = lock(&e.ctl.inner).store.state().clone();
        let mut got: Vec<(Option<u32>, Option<u32>)> = st
            .routes
            .values()
            .map(|r| (r.ssrc, r.rewrite.ssrc))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(Some(100), Some(ssrcs[0])), (Some(200), Some(ssrcs[1]))]
        );
    }

    /// A session ICE never binds is removed after `signaling_timeout_secs` with its routes,
    /// audited and counted; a bound one stays.
    #[test]
    fn unbound_sessions_expire() {
        let e = env("expire");
        let host = sign(&claims("demo", "blue", TokenRole::Host));
        let view = sign(&claims("demo", "blue", TokenRole::Viewer));
        let r = e.public("POST", "/whip/blue", Some(&host), &offer("sendonly", 10));
        assert_eq!(r.status, 201, "{}", body(&r));
        for ssrc in [20, 30] {
            let r = e.public("POST", "/whep/blue", Some(&view), &offer("recvonly", ssrc));
            assert_eq!(r.status, 201, "{}", body(&r));
        }
        let members = e.ctl.members();
        let p = members.iter().find(|m| m.publishes).unwrap().session;
        let bound = members.iter().find(|m| !m.publishes).unwrap().session;
        e.ctl
            .ice_bind_peer(bound, "127.0.0.1:50000".parse().unwrap())
            .unwrap();
        assert_eq!(lock(&e.ctl.inner).store.state().routes.len(), 2);
        let t0 = util::unix_ms();
        assert_eq!(e.ctl.expire_unbound_sessions(t0), 0, "not yet");
        let later = t0 + 31_000;
        assert_eq!(e.ctl.expire_unbound_sessions(later), 2);
        let left: Vec<u64> = e.ctl.members().iter().map(|m| m.session).collect();
        assert_eq!(left, vec![bound]);
        let st = lock(&e.ctl.inner).store.state().clone();
        assert!(!st.sessions.contains_key(&p));
        assert!(st.sessions.contains_key(&bound));
        assert!(st.routes.is_empty(), "routes of expired sessions go");
        assert!(lock(&e.ctl.ice).len() == 1);
        assert_eq!(e.ctl.expire_unbound_sessions(later + 60_000), 0);
        assert_eq!(e.audit().matches("webrtc.expired").count(), 2);
        let m = body(&e.admin("GET", "/metrics", ""));
        assert!(m.contains("sluice_control_webrtc_expired_total 2"), "{m}");
    }

    /// Concurrent sessions are capped per subject (429) and per room (403).
    #[test]
    fn session_caps_per_subject_and_room() {
        let e = env_with(
            "caps",
            "max_sessions_per_subject = 2\nmax_sessions_per_room = 3",
        );
        let tok = |sub: &str, room: &str| {
            let mut c = claims("demo", room, TokenRole::Viewer);
            c.sub = sub.into();
            sign(&c)
        };
        let join = |t: &str, room: &str| {
            e.public(
                "POST",
                &format!("/whep/{room}"),
                Some(t),
                &offer("recvonly", 5),
            )
        };
        for _ in 0..2 {
            assert_eq!(join(&tok("alice", "blue"), "blue").status, 201);
        }
        let r = join(&tok("alice", "blue"), "blue");
        assert_eq!(r.status, 429, "{}", body(&r));
        assert_eq!(reason(&r), "too_many_sessions");
        // Another room is counted on its own.
        assert_eq!(join(&tok("alice", "red"), "red").status, 201);
        assert_eq!(join(&tok("bob", "blue"), "blue").status, 201);
        let r = join(&tok("carol", "blue"), "blue");
        assert_eq!(r.status, 403, "{}", body(&r));
        assert_eq!(reason(&r), "room_full");
        assert_eq!(e.ctl.members().len(), 4);
        // Leaving frees a place.
        let bob = e
            .ctl
            .members()
            .into_iter()
            .find(|m| m.room == "blue")
            .unwrap();
        assert_eq!(e.public("DELETE", &bob.location(), None, "").status, 200);
        assert_eq!(join(&tok("carol", "blue"), "blue").status, 201);
    }

    /// Joins racing with removals never leave a route to or from a deleted session.
    #[test]
    fn removal_racing_joins_leaves_no_dangling_routes() {
        let e = env("race");
        let host = sign(&claims("demo", "blue", TokenRole::Host));
        let view = sign(&claims("demo", "blue", TokenRole::Viewer));
        for round in 0..20u32 {
            let r = e.public(
                "POST",
                "/whip/blue",
                Some(&host),
                &offer("sendonly", 100 + round),
            );
            assert_eq!(r.status, 201, "{}", body(&r));
            let loc = r
                .headers
                .iter()
                .find(|(k, _)| *k == "Location")
                .map(|(_, v)| v.clone())
                .unwrap();
            std::thread::scope(|sc| {
                sc.spawn(|| e.public("DELETE", &loc, None, ""));
                sc.spawn(|| e.public("POST", "/whep/blue", Some(&view), &offer("recvonly", 7)));
            });
            let st = lock(&e.ctl.inner).store.state().clone();
            for r in st.routes.values() {
                assert!(
                    st.sessions.contains_key(&r.from) && st.sessions.contains_key(&r.to),
                    "round {round}: dangling route {r:?}"
                );
            }
            // Clear the viewers for the next round.
            for m in e.ctl.members() {
                e.public("DELETE", &m.location(), None, "");
            }
        }
    }

    /// `POST /demo/token` with a content type, an `Origin` and a peer address of choice.
    fn demo_token(e: &Env, body: &str, ctype: Option<&str>, origin: Option<&str>) -> Response {
        let mut r = req("POST", "/demo/token", None, body, "tcp:127.0.0.1:5555");
        let ctype = ctype.unwrap_or("application/json");
        if !ctype.is_empty() {
            r.headers.push(("content-type".into(), ctype.into()));
        }
        if let Some(o) = origin {
            r.headers.push(("origin".into(), o.into()));
        }
        e.ctl.handle_public(&r)
    }

    /// A web page in the operator's browser cannot mint demo tokens: no CORS, JSON only,
    /// foreign `Origin` refused, viewer/speaker roles only; the endpoint can be switched off.
    #[test]
    fn demo_token_refuses_cross_site_and_privileged_roles() {
        let e = env("demotok");
        e.ctl.set_urls(crate::api::Urls {
            public_url: "http://127.0.0.1:8080".into(),
            ..Default::default()
        });
        let ok = r#"{"room":"x","role":"viewer"}"#;
        let r = demo_token(&e, ok, None, None);
        assert_eq!(r.status, 201, "{}", body(&r));
        assert!(
            !r.headers
                .iter()
                .any(|(k, _)| k.starts_with("Access-Control-")),
            "no CORS on /demo: {:?}",
            r.headers
        );
        for origin in ["http://127.0.0.1:8080", "http://localhost:8080"] {
            let r = demo_token(&e, ok, None, Some(origin));
            assert_eq!(r.status, 201, "{origin}: {}", body(&r));
        }
        for origin in ["http://evil.test", "http://127.0.0.1:9090", "null"] {
            let r = demo_token(&e, ok, None, Some(origin));
            assert_eq!(r.status, 403, "{origin}: {}", body(&r));
            assert!(!r
                .headers
                .iter()
                .any(|(k, _)| k.starts_with("Access-Control-")));
        }
        // A "simple" cross-site POST (no preflight) cannot be application/json.
        for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
            let r = demo_token(&e, ok, Some(ct), None);
            assert_eq!(r.status, 415, "{ct:?}: {}", body(&r));
        }
        let r = demo_token(&e, ok, Some("application/json; charset=utf-8"), None);
        assert_eq!(r.status, 201);
        for role in ["host", "moderator"] {
            let r = demo_token(
                &e,
                &format!(r#"{{"room":"x","role":"{role}"}}"#),
                None,
                None,
            );
            assert_eq!(r.status, 403, "{role}: {}", body(&r));
            assert_eq!(reason(&r), "role_not_allowed");
        }
        let r = demo_token(&e, r#"{"room":"x","role":"speaker"}"#, None, None);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["role"], "speaker");
        // The switch.
        let off = env_with("demotok-off", "demo_tokens = false");
        assert_eq!(demo_token(&off, ok, None, None).status, 404);
    }

    /// `control.token_leeway_secs` and `token_max_lifetime_secs` reach the token checks.
    #[test]
    fn token_limits_come_from_config() {
        let e = env_with(
            "limits",
            "token_leeway_secs = 0\ntoken_max_lifetime_secs = 900",
        );
        let n = now();
        // Within the default 30 s leeway, outside a zero one.
        let mut c = claims("demo", "blue", TokenRole::Viewer);
        c.nbf = n + 20;
        c.iat = n;
        let r = e.public("POST", "/whep/blue", Some(&sign(&c)), &offer("recvonly", 3));
        assert_eq!(r.status, 401, "{}", body(&r));
        assert_eq!(reason(&r), "not_yet_valid");
        // Longer than the configured lifetime (well under the default 86400 s).
        let mut c = claims("demo", "blue", TokenRole::Viewer);
        c.exp = n + 3000;
        let r = e.public("POST", "/whep/blue", Some(&sign(&c)), &offer("recvonly", 3));
        assert_eq!(r.status, 401, "{}", body(&r));
        assert_eq!(reason(&r), "lifetime_too_long");
        let c = claims("demo", "blue", TokenRole::Viewer);
        let r = e.public("POST", "/whep/blue", Some(&sign(&c)), &offer("recvonly", 3));
        assert_eq!(r.status, 201, "{}", body(&r));
        // The admin API mints no longer token either.
        let r = e.admin(
            "POST",
            "/v1/tokens",
            r#"{"app":"demo","room":"blue","role":"viewer","ttl_secs":901}"#,
        );
        assert_eq!(r.status, 400, "{}", body(&r));
    }

    /// The token bucket: a burst, then the configured rate; every denial is counted.
    #[test]
    fn denied_audit_bucket() {
        let mut d = DeniedLog::default();
        let t = 1_000_000;
        let first: usize = (0..100).filter(|_| d.admit("expired", t)).count();
        assert_eq!(first as u64, DENIED_AUDIT_BURST);
        assert!(!d.admit("expired", t + 50), "half an entry refilled");
        assert!(d.admit("expired", t + 100));
        let later: usize = (0..100).filter(|_| d.admit("malformed", t + 1100)).count();
        assert_eq!(later as u64, DENIED_AUDIT_RATE);
        assert_eq!(d.by_reason["expired"], 102);
        assert_eq!(d.by_reason["malformed"], 100);
        assert_eq!(d.suppressed, 202 - 20 - 1 - 10);
    }

    /// A flood of unauthenticated requests: every one counted, few audited, the rest summed
    /// in a periodic `webrtc.denied_suppressed` line.
    #[test]
    fn denied_flood_is_counted_and_audit_rate_limited() {
        let e = env("flood");
        let whep = offer("recvonly", 9);
        for _ in 0..200 {
            let r = e.public("POST", "/whep/blue", Some("x.y.z"), &whep);
            assert_eq!(reason(&r), "malformed");
        }
        let audited = e.audit().matches("whep.denied").count() as u64;
        assert!(
            (DENIED_AUDIT_BURST..200).contains(&audited),
            "{audited} entries"
        );
        let m = body(&e.admin("GET", "/metrics", ""));
        assert!(
            m.contains("sluice_control_webrtc_denied_total{reason=\"malformed\"} 200"),
            "{m}"
        );
        let far = util::unix_ms() + DENIED_SUPPRESSED_EVERY_MS + 1;
        assert_eq!(e.ctl.report_suppressed_denials(far), 200 - audited);
        assert!(e.audit().contains(&format!("\"count\":{}", 200 - audited)));
        assert_eq!(e.ctl.report_suppressed_denials(far + 60_000), 0);
    }

    #[test]
    fn tokens_apps_and_demo_endpoint() {
        let e = env("admin");
        let r = e.admin(
            "POST",
            "/v1/tokens",
            r#"{"app":"demo","room":"blue","role":"moderator","ttl_secs":60,"email":"a@b.c"}"#,
        );
        assert_eq!(r.status, 201, "{}", body(&r));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let t = v["token"].as_str().unwrap();
        let r = e.public("POST", "/whip/demo/blue", Some(t), &offer("sendonly", 5));
        assert_eq!(r.status, 201, "{}", body(&r));
        assert_eq!(e.admin("GET", "/v1/apps", "").status, 200);
        assert_eq!(e.admin("POST", "/v1/apps", r#"{"id":"side"}"#).status, 201);
        assert!(e
            .audit()
            .lines()
            .any(|l| l.contains("app.create") && l.contains(r#""app":"side""#)));
        let st: Value = serde_json::from_slice(&e.admin("GET", "/v1/status", "").body).unwrap();
        assert_eq!(st["demo"], true);
        let r = e.admin("GET", "/v1/apps/demo/keys", "");
        assert!(body(&r).contains("\"t1\"") && body(&r).contains("\"dev\""));
        assert!(
            !body(&r).contains("secret"),
            "keys are never listed with secrets"
        );
        assert_eq!(e.admin("DELETE", "/v1/apps/demo/keys/t1", "").status, 204);
        assert_eq!(e.admin("DELETE", "/v1/apps/demo/keys/t1", "").status, 404);
        // Demo page and loopback-only demo tokens.
        assert_eq!(e.public("GET", "/demo", None, "").status, 200);
        let r = demo_token(&e, r#"{"room":"x","role":"speaker"}"#, None, None);
        assert_eq!(r.status, 201, "{}", body(&r));
        let r = e.public_from(
            "POST",
            "/demo/token",
            None,
            r#"{"room":"x","role":"speaker"}"#,
            "tcp:192.0.2.1:5",
        );
        assert_eq!(r.status, 403);
        // Removing the application removes its participants.
        assert_eq!(e.admin("DELETE", "/v1/apps/demo", "").status, 204);
        assert!(e.ctl.members().is_empty());
        assert_eq!(e.public("GET", "/demo", None, "").status, 404);
        let st: Value = serde_json::from_slice(&e.admin("GET", "/v1/status", "").body).unwrap();
        assert_eq!(st["demo"], false);
    }
}
