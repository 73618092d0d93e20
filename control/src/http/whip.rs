//! WebRTC signaling on control's HTTP listeners: WHIP (`POST /whip/…`) and WHEP
//! (`POST /whep/…`) with their resources (`DELETE`), CORS, and the `/demo` page with its
//! loopback-only token endpoint.
//!
//! A WHIP/WHEP request reads straight: the token check at the door (401/403 with a JSON
//! reason, counted and audited at a bounded rate), then the core's join
//! ([`crate::core::Core::join`]: SDP answer, pending session, routes, commit to shm), then the
//! answer with its `Location`. May not touch: shm and the journal (the core does), sockets,
//! DTLS records (the slow path runs handshakes and hands keys to the core).

use super::body::{parse_max_layer, parse_max_temporal, Body};
use super::{audit_response, error_response, Request, Response};
use crate::api::Control;
use crate::clock;
use crate::cluster::forward::FORWARDED_BY;
use crate::cluster::{ClusterError, Placement};
use crate::core::denials::Denial;
use crate::core::join::JoinRequest;
use crate::webrtc::token::{self, Credential, Intent, Limits, Target, TokenError};
use contract::shm::Role;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};

/// Default lifetime of tokens minted by the admin API and the demo endpoint.
pub const DEFAULT_TOKEN_TTL: u64 = 3600;
/// The demo page (static, no external resources).
const DEMO_HTML: &str = include_str!("../../static/demo.html");

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

/// An application or room name: 1..=64 of `A-Z a-z 0-9 - _ .`.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn preflight(segs: &[&str]) -> Response {
    let mut r = Response::empty(204);
    r.headers.push((
        "Access-Control-Allow-Methods",
        "POST, PATCH, DELETE, OPTIONS".into(),
    ));
    r.headers.push((
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type".into(),
    ));
    r.headers.push(("Access-Control-Max-Age", "600".into()));
    if segs.len() <= 3 && segs.get(1) != Some(&"resource") {
        r.headers.push(("Accept-Post", "application/sdp".into()));
    }
    r
}

fn method_not_allowed_cors() -> Response {
    let mut r = Response::error(405, "method not allowed");
    r.headers.push(("Allow", "POST, DELETE, OPTIONS".into()));
    r
}

fn bearer(req: &Request) -> Option<&str> {
    req.header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
}

impl Control {
    /// WHIP/WHEP are served on the admin listener too when no separate public one exists.
    pub(super) fn public_on_admin(&self) -> bool {
        let c = &self.config().control;
        c.public_listen
            .as_ref()
            .is_none_or(|p| *p == c.admin_listen)
    }

    /// WHIP, WHEP, their resources, CORS preflight and the demo page; `None` for other paths.
    pub(super) fn handle_webrtc(&self, req: &Request) -> Option<Response> {
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let cfg = self.config();
        let origin = cfg.control.cors_allow_origin.as_str();
        let m = req.method.as_str();
        if let (Some(c), ["cluster", ..]) = (self.cluster.get(), segs.as_slice()) {
            return super::trunks::handle_trunks(c, &self.core, req);
        }
        let r = match (m, segs.as_slice()) {
            (_, ["demo"]) if self.core.demo_app().is_none() => return None,
            ("GET" | "HEAD", ["demo"]) => {
                return Some(Response::text(
                    200,
                    "text/html; charset=utf-8",
                    DEMO_HTML.to_string(),
                ))
            }
            // No CORS on /demo: only the page control serves itself may call it.
            ("POST", ["demo", "token"]) => return Some(self.demo_token(req)),
            ("OPTIONS", ["whip" | "whep", ..]) => preflight(&segs),
            ("DELETE", ["whip" | "whep", "resource", id, secret]) => self.leave(id, secret),
            ("PATCH", ["whep", "resource", id, secret]) => self.whep_layer(req, id, secret),
            ("POST", [kind @ ("whip" | "whep"), rest @ ..]) if (1..=2).contains(&rest.len()) => {
                let (app, room) = match rest {
                    [room] => match self.core.default_app() {
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

    /// Why a demo token request is refused, if it is: a non-loopback client, a foreign
    /// `Origin`, a body that is not JSON.
    fn demo_refusal(&self, req: &Request) -> Option<Response> {
        let json_body = req.header("content-type").is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if !peer_ip(req).is_some_and(|ip| ip.is_loopback()) {
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
        }
    }

    /// `POST /demo/token` `{"room", "role"}`: a short-lived viewer or speaker token for the
    /// bootstrap application, to loopback clients only. A cross-site page in the operator's
    /// browser must not get one: no CORS headers, a JSON body only (a "simple" cross-origin
    /// POST cannot send `application/json` without a preflight we never allow), and a
    /// present `Origin` must be control's own.
    fn demo_token(&self, req: &Request) -> Response {
        let Some(app) = self
            .core
            .demo_app()
            .filter(|_| self.config().control.demo_tokens)
        else {
            return Response::error(404, "the demo token endpoint is disabled");
        };
        if let Some(r) = self.demo_refusal(req) {
            let ids = json!({"from": self.core.audit.hasher.hash_client(&req.peer)});
            audit_response(&self.core, "demo", "demo.token", ids, &r);
            return r;
        }
        let r = (|| -> Result<Response, Response> {
            let b = Body::parse(&req.body, &["room", "role"]).map_err(|e| error_response(&e))?;
            let room = b.req_str("room").map_err(|e| error_response(&e))?;
            let role = match b.opt_str("role").map_err(|e| error_response(&e))? {
                None | Some("viewer") => Role::Viewer,
                Some("speaker") => Role::Speaker,
                Some(s) => {
                    return Err(Response::json(
                        403,
                        &json!({"error": format!("the demo mints viewer or speaker tokens, not `{s}`"),
                            "reason": "role_not_allowed"}),
                    ))
                }
            };
            let ttl = DEFAULT_TOKEN_TTL.min(600);
            self.mint(&app, room, role, ttl, None, "demo")
                .map_err(|e| error_response(&e))
        })();
        let resp = r.unwrap_or_else(|e| e);
        audit_response(&self.core, "demo", "demo.token", json!({"app": app}), &resp);
        resp
    }

    /// Token checks as configured (`control.token_leeway_secs`, `token_max_lifetime_secs`).
    pub(super) fn token_limits(&self) -> Limits {
        let c = &self.config().control;
        Limits {
            leeway_secs: c.token_leeway_secs,
            max_lifetime_secs: c.token_max_lifetime_secs,
        }
    }

    fn deny(&self, kind: &str, app: &str, room: &str, req: &Request, e: &TokenError) -> Response {
        let reason = reason_code(e);
        let mut r = Response::json(
            reason_status(e),
            &json!({"error": e.to_string(), "reason": reason}),
        );
        if r.status == 401 {
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
        }
        let action = format!("{kind}.denied");
        let d = Denial {
            action: &action,
            target: [("app", app), ("room", room)],
            reason,
            from: self.core.audit.hasher.hash_client(&req.peer),
            status: r.status,
            message: e.to_string(),
        };
        self.core.record_denial(d, clock::unix_ms());
        r
    }

    /// The token check at the door: the role granted in `app`/`room`, and who holds it.
    fn authorize(
        &self,
        req: &Request,
        app: &str,
        room: &str,
        intent: Intent,
    ) -> Result<(Role, Option<String>), TokenError> {
        let bearer = bearer(req).ok_or(TokenError::Malformed("missing bearer token"))?;
        let cred = if bearer.matches('.').count() == 2 {
            Credential::Signed(bearer)
        } else {
            Credential::Stream(bearer)
        };
        let now = clock::unix_ms() / 1000;
        let target = Target { app, room, intent };
        // The registry is locked only to look a key up, never while the token is parsed or
        // its signature checked.
        let key = |app: &str, kid: Option<&str>| self.core.apps().key(app, kid);
        // An application or room we do not know is answered exactly as one with the default
        // policy, so the answer does not tell which applications exist.
        let policy = self
            .core
            .apps()
            .reg
            .policy(app, room)
            .cloned()
            .unwrap_or_default();
        let stream = matches!(cred, Credential::Stream(_));
        let grant = token::authorize(
            cred,
            key,
            now,
            peer_ip(req),
            &target,
            &policy,
            &self.token_limits(),
        )
        .map_err(|e| match e {
            // Nobody without the password learns more from a stream token than "invalid":
            // not whether the room exists, nor what it accepts.
            TokenError::Malformed(_) => e,
            _ if stream => TokenError::StreamTokenInvalid,
            e => e,
        })?;
        Ok((grant.role, grant.sub))
    }

    /// `POST /whip/{app}/{room}` (publish) or `/whep/{app}/{room}` (watch): token check, then
    /// the core's join, then the SDP answer.
    fn join(&self, req: &Request, publish: bool, app: &str, room: &str) -> Response {
        let kind = if publish { "whip" } else { "whep" };
        let intent = if publish {
            Intent::Publish
        } else {
            Intent::Subscribe
        };
        // Validated before anything is audited: a name that is not one is never logged.
        if !valid_segment(app) || !valid_segment(room) {
            return Response::error(404, "bad application or room name");
        }
        if bearer(req).is_none() {
            let e = TokenError::Malformed("missing bearer token");
            return self.deny(kind, app, room, req, &e);
        }
        let (role, sub) = match self.authorize(req, app, room, intent) {
            Ok(g) => g,
            Err(e) => return self.deny(kind, app, room, req, &e),
        };
        let hasher = &self.core.audit.hasher;
        let ids = json!({"app": app, "room": room, "role": role.name(),
            "sub": sub.as_deref().map(|s| hasher.hash(s))});
        let subject = match &sub {
            Some(s) => hasher.hash(&format!("sub:{s}")),
            None => hasher.hash(&format!(
                "ip:{}",
                peer_ip(req).map(|i| i.to_string()).unwrap_or_default()
            )),
        };
        if let Some(r) = self.place_or_forward(req, kind, app, room) {
            audit_response(&self.core, "webrtc", &format!("{kind}.join"), ids, &r);
            return r;
        }
        let jr = JoinRequest {
            app,
            room,
            publish,
            role,
            subject,
            offer: &req.body,
        };
        let r = match self.core.join(jr, clock::unix_ms()) {
            Ok(j) => {
                let mut r = Response::text(201, "application/sdp", j.sdp);
                r.headers.push(("Location", j.location));
                r
            }
            Err(e) => error_response(&e),
        };
        audit_response(&self.core, "webrtc", &format!("{kind}.join"), ids, &r);
        r
    }

    /// In a cluster: place the room, and answer for the owner when it is another node (the
    /// request forwarded to it, `Authorization` included). `None`: the join runs here.
    /// Every placement that creates an entry, and every refusal, is audited.
    fn place_or_forward(
        &self,
        req: &Request,
        kind: &str,
        app: &str,
        room: &str,
    ) -> Option<Response> {
        let cluster = self.cluster.get()?;
        let forwarded_by = req.header(FORWARDED_BY);
        let refuse = |status: u16, e: &ClusterError| {
            let mut r = Response::json(
                status,
                &json!({"error": e.to_string(), "reason": e.reason()}),
            );
            r.headers.push(("Retry-After", "1".into()));
            r
        };
        let placed = cluster.place(app, room, clock::unix_ms());
        let audit = |owner: &str, placed: bool, status: u16, result: &str| {
            self.core.audit.record(
                "cluster",
                "cluster.place",
                json!({"app": app, "room": room, "kind": kind, "owner": owner,
                    "node": cluster.node_id(), "placed": placed, "forwarded_by": forwarded_by}),
                status,
                result,
            );
        };
        match placed {
            Ok(Placement::Local { placed }) => {
                if placed {
                    audit(cluster.node_id(), true, 200, "ok");
                }
                None
            }
            // A forwarded request is never forwarded again: the placement moved meanwhile.
            Ok(Placement::Remote(owner)) if forwarded_by.is_some() => {
                let e = ClusterError::Forward {
                    node: owner.node_id.clone(),
                    message: "the room moved while the request was forwarded".into(),
                };
                audit(&owner.node_id, false, 503, &e.to_string());
                Some(refuse(503, &e))
            }
            // Cascade: a viewer served from this node's relay over a trunk from the owner's.
            Ok(Placement::Remote(owner))
                if kind == "whep" && cluster.serve_from_trunk(&self.core, app, room, &owner).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, %app, %room, "cluster: no trunk; forwarding the viewer");
                    false
                }) =>
            {
                None
            }
            Ok(Placement::Remote(owner)) => match cluster.forward(req, &owner) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, %app, %room, "cluster: forwarding a join failed");
                    audit(&owner.node_id, false, 502, &e.to_string());
                    Some(refuse(502, &e))
                }
            },
            Err(e) => {
                audit("", false, 503, &e.to_string());
                Some(refuse(503, &e))
            }
        }
    }

    /// `DELETE` on a WHIP/WHEP resource: the participant leaves (session and routes go).
    /// `PATCH` on a WHEP resource with `application/json` `{"max_layer": 0..=2 | null,
    /// "max_temporal": 0..=3 | null}`: the viewer's own caps on the simulcast layer and the
    /// VP8 temporal layer it receives (docs/WEBRTC.md "Simulcast"; absent or null: no cap).
    /// 200 `{"max_layer": N|null, "max_temporal": N|null, "routes": COUNT}`; 404 unknown resource; 409 no simulcast source
    /// reaches the viewer; 415 another body type (trickle ICE is not offered).
    fn whep_layer(&self, req: &Request, id: &str, secret: &str) -> Response {
        let Ok(id) = id.parse::<u64>() else {
            return Response::error(404, "no such resource");
        };
        if !self.core.member_with_secret(id, secret) {
            return Response::error(404, "no such resource");
        }
        let json = req
            .header("content-type")
            .is_some_and(|c| c.trim().starts_with("application/json"));
        if !json {
            return Response::error(415, "a WHEP resource takes application/json layer requests");
        }
        let r = (|| {
            let b = Body::parse(&req.body, &["max_layer", "max_temporal"])?;
            let max = match b.get("max_layer") {
                // Absent or null: no cap.
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_max_layer(v, "max_layer")?),
            };
            let max_temporal = match b.get("max_temporal") {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_max_temporal(v, "max_temporal")?),
            };
            let routes = self.core.set_max_layer(id, max, max_temporal)?;
            Ok(Response::json(
                200,
                &json!({"max_layer": max, "max_temporal": max_temporal, "routes": routes.len()}),
            ))
        })();
        let r = match r {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        audit_response(
            &self.core,
            "webrtc",
            "webrtc.layer",
            json!({"session": id}),
            &r,
        );
        r
    }

    fn leave(&self, id: &str, secret: &str) -> Response {
        let Ok(id) = id.parse::<u64>() else {
            return Response::error(404, "no such resource");
        };
        if !self.core.member_with_secret(id, secret) {
            return Response::error(404, "no such resource");
        }
        let r = match self.core.remove_member(id, false) {
            Ok(()) => Response::empty(200),
            Err(e) => error_response(&e),
        };
        audit_response(
            &self.core,
            "webrtc",
            "webrtc.leave",
            json!({"session": id}),
            &r,
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::denials::{DENIED_AUDIT_BURST, DENIED_SUPPRESSED_EVERY_MS};
    use crate::webrtc::token::mint_stream;
    use crate::webrtc::token::{Claims, DevKey};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use contract::config::{Config, Secret};
    use contract::shm::session_flags;
    use serde_json::Value;
    use std::path::PathBuf;
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
        clock::unix_ms() / 1000
    }

    fn claims(app: &str, room: &str, role: Role) -> Claims {
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
        let mut c = claims("demo", "blue", Role::Host);
        c.exp = n - 100;
        c.nbf = n - 200;
        c.iat = n - 200;
        cases.push(("/whip/demo/blue", sign(&c), &whip, 401, "expired"));
        let mut c = claims("demo", "blue", Role::Host);
        c.nbf = n + 1000;
        c.exp = n + 2000;
        cases.push(("/whip/demo/blue", sign(&c), &whip, 401, "not_yet_valid"));
        let c = claims("demo", "blue", Role::Host);
        cases.push(("/whip/other/blue", sign(&c), &whip, 403, "wrong_app"));
        cases.push(("/whip/demo/red", sign(&c), &whip, 403, "wrong_room"));
        let forged = token::mint(&DevKey::new("t1", &[9u8; 32]).unwrap(), &c);
        cases.push(("/whip/demo/blue", forged, &whip, 401, "bad_signature"));
        let v = claims("demo", "blue", Role::Viewer);
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
        let mut v = claims("demo", "vip", Role::Viewer);
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
            r#"{"policy":{"accepted_token_kinds":["stream"],"stream_password":"pw-0123456789","stream_timeout_minutes":5,"bind_ip":true}}"#,
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
        let stale = mint_stream("pw-0123456789", n - 3600, Some(ip));
        cases.push((
            "/whep/demo/legacy",
            stale,
            &whep,
            401,
            "stream_token_invalid",
        ));
        // Signed tokens are not accepted in that room.
        let c = claims("demo", "legacy", Role::Viewer);
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
        let good = mint_stream("pw-0123456789", n, Some(ip));
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

    /// A Chromium-style simulcast WHIP offer: three RIDs, the RID extension (id 10), no
    /// `a=ssrc` lines.
    fn simulcast_offer() -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:{FP}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n"
        )
    }

    /// The plain RTP header a relay reports for an unrouted stream: MID "0" and `rid` in
    /// one-byte extension elements (RFC 8285 §4.2), padded to 32 bits.
    fn rid_header(ssrc: u32, rid: &[u8]) -> Vec<u8> {
        rid_header_with(ssrc, 10, rid)
    }

    /// [`rid_header`] with the RID in extension element `id` (11: the repaired RID).
    fn rid_header_with(ssrc: u32, id: u8, rid: &[u8]) -> Vec<u8> {
        let mut ext = vec![(4 << 4), b'0'];
        if !rid.is_empty() {
            ext.push((id << 4) | (rid.len() as u8 - 1));
            ext.extend_from_slice(rid);
        }
        while ext.len() % 4 != 0 {
            ext.push(0);
        }
        let mut h = vec![0x90, 96, 0, 1, 0, 0, 0, 9];
        h.extend_from_slice(&ssrc.to_be_bytes());
        h.extend_from_slice(&[0xBE, 0xDE]);
        h.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        h.extend_from_slice(&ext);
        h
    }

    /// An edge's trunk room whose origin carries a simulcast publisher's layers as streams of
    /// their own: the edge puts them back into one simulcast section, and every local viewer
    /// gets every layer into one output SSRC as layered routes, whether it was there when
    /// the layers arrived (one update bringing several) or joins later; nothing twice.
    #[test]
    fn a_trunk_rooms_simulcast_layers_reach_each_viewer_in_one_output() {
        use crate::cluster::trunk::{member_media, Stream, StreamCodec, StreamLayer};
        use crate::core::sessions::NewSession;
        use crate::core::trunks::TRUNK_MEMBER_BASE;
        use contract::srtp::{MasterKey, Profile};
        let e = env("trunk-layers");
        let view_tok = sign(&claims("demo", "blue", Role::Viewer));
        let watch = |e: &Env| {
            let r = e.public(
                "POST",
                "/whep/demo/blue",
                Some(&view_tok),
                &offer("recvonly", 2000),
            );
            assert_eq!(r.status, 201, "{}", body(&r));
        };
        watch(&e);
        let core = &e.ctl.core;
        let key = MasterKey::new(Profile::AeadAes128Gcm, &[9u8; 28]).unwrap();
        let trunk = core
            .create_session(
                NewSession {
                    peer: Some("192.0.2.20:4000".parse().unwrap()),
                    profile: Profile::AeadAes128Gcm,
                    rx_key: key,
                    tx_key: key,
                    role: Role::Trunk,
                    max_pps: 0,
                    ice: None,
                },
                0,
                &mut serde_json::json!({}),
            )
            .unwrap()
            .id;
        let layer = |index: u8, ssrc: u32| Stream {
            kind: "video".into(),
            ssrc,
            codecs: vec![StreamCodec {
                pt: 96,
                name: "VP8".into(),
                clock_rate: 90_000,
                channels: None,
                fmtp: None,
                rtcp_fb: vec!["nack".into(), "nack pli".into()],
            }],
            extmaps: Vec::new(),
            rtx: Vec::new(),
            layer: Some(StreamLayer {
                publisher: 77,
                section: 0,
                index,
                count: 3,
            }),
        };
        let key = TRUNK_MEMBER_BASE + 1;
        let put = |streams: &[Stream]| {
            core.put_trunk_member(key, trunk, ("demo", "blue"), member_media(streams), 0)
                .unwrap()
        };
        let m = member_media(&[layer(0, 0xF0), layer(1, 0xF1), layer(2, 0xF2)]);
        assert_eq!(m.media.len(), 1, "one simulcast section");
        assert!(m.media[0].simulcast.is_some() && m.media[0].remote_ssrcs.is_empty());
        assert_eq!(m.primary_ssrcs, vec![Vec::<u32>::new()]);
        assert_eq!(m.learned.len(), 3);
        // A layer given twice, or outside its count, is left out.
        let odd = member_media(&[layer(0, 0xF0), layer(0, 0xF9), layer(3, 0xFA)]);
        assert_eq!(odd.learned.len(), 1);
        // The room opens with the lowest layer (the member is new: its first viewer joins
        // after it), then one update brings the two others.
        assert_eq!(put(&[layer(0, 0xF0)]), 0);
        let layered = |to: u64| -> Vec<(Option<u32>, Option<u32>, u8)> {
            let st = core.ledger().store.state().clone();
            let mut v: Vec<_> = st
                .routes
                .values()
                .filter(|r| r.from == trunk && r.to == to)
                .map(|r| {
                    (
                        r.ssrc,
                        r.rewrite.ssrc,
                        r.rewrite.layer.expect("layered").index,
                    )
                })
                .collect();
            v.sort();
            v
        };
        let viewers = |e: &Env| -> Vec<u64> {
            e.ctl
                .members()
                .iter()
                .filter(|m| !m.publishes && m.session < TRUNK_MEMBER_BASE)
                .map(|m| m.session)
                .collect()
        };
        let first = viewers(&e)[0];
        // The viewer was there before the member: nothing reached it yet.
        assert!(layered(first).is_empty());
        assert_eq!(put(&[layer(0, 0xF0), layer(1, 0xF1), layer(2, 0xF2)]), 3);
        let routes = layered(first);
        assert_eq!(
            routes.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
            vec![(Some(0xF0), 0), (Some(0xF1), 1), (Some(0xF2), 2)]
        );
        assert!(
            routes.iter().all(|r| r.1.is_some() && r.1 == routes[0].1),
            "one output SSRC"
        );
        // The same streams again add nothing.
        assert_eq!(put(&[layer(0, 0xF0), layer(1, 0xF1), layer(2, 0xF2)]), 0);
        // A viewer joining now gets the three layers with its join.
        watch(&e);
        let later = *viewers(&e).iter().find(|&&v| v != first).unwrap();
        let routes = layered(later);
        assert_eq!(routes.len(), 3, "{routes:?}");
        assert!(
            routes.iter().all(|r| r.1.is_some() && r.1 == routes[0].1),
            "one output SSRC"
        );
        // A layer arriving after a viewer gets the lowest one joins that viewer's output.
        let (key2, green) = (TRUNK_MEMBER_BASE + 2, [layer(0, 0xE0), layer(1, 0xE1)]);
        let put2 = |streams: &[Stream]| {
            core.put_trunk_member(key2, trunk, ("demo", "green"), member_media(streams), 0)
                .unwrap()
        };
        assert_eq!(put2(&green[..1]), 0);
        let tok = sign(&claims("demo", "green", Role::Viewer));
        let r = e.public(
            "POST",
            "/whep/demo/green",
            Some(&tok),
            &offer("recvonly", 2000),
        );
        assert_eq!(r.status, 201, "{}", body(&r));
        let v = e
            .ctl
            .members()
            .iter()
            .find(|m| !m.publishes && m.room == "green")
            .unwrap()
            .session;
        assert_eq!(layered(v).len(), 1);
        assert_eq!(put2(&green), 1);
        let routes = layered(v);
        assert_eq!(
            routes.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
            vec![(Some(0xE0), 0), (Some(0xE1), 1)]
        );
        assert!(
            routes[0].1.is_some() && routes[0].1 == routes[1].1,
            "one output SSRC"
        );
    }

    /// WHIP simulcast by RID: the answer receives the three RIDs; each layer's SSRC is learned
    /// from its first reported packet and routed, layered, to the viewers already there and to
    /// those joining later; repeats, unknown RIDs and strangers teach nothing.
    #[test]
    fn whip_simulcast_layers_are_learned_from_rids_and_routed() {
        use crate::core::simulcast::StreamLearned;
        let e = env("simulcast");
        let pub_tok = sign(&claims("demo", "blue", Role::Host));
        let view_tok = sign(&claims("demo", "blue", Role::Viewer));
        let r = e.public(
            "POST",
            "/whep/demo/blue",
            Some(&view_tok),
            &offer("recvonly", 2000),
        );
        assert_eq!(r.status, 201, "{}", body(&r));
        let r = e.public("POST", "/whip/blue", Some(&pub_tok), &simulcast_offer());
        assert_eq!(r.status, 201, "{}", body(&r));
        let sdp = body(&r);
        assert!(sdp.contains("a=simulcast:recv q;h;f\r\n"), "{sdp}");
        assert!(sdp.contains("a=rid:f recv\r\n"), "{sdp}");
        let members = e.ctl.members();
        let p = members.iter().find(|m| m.publishes).unwrap().session;
        let v1 = members.iter().find(|m| !m.publishes).unwrap().session;
        // No route before a layer is known: an any-SSRC route would mix the layers.
        assert!(e.ctl.core.ledger().store.state().routes.is_empty());
        let peer: std::net::SocketAddr = "192.0.2.10:5000".parse().unwrap();
        e.ctl.core.bind_peer(p, peer).unwrap();
        let learn = |ssrc: u32, rid: &[u8]| {
            e.ctl
                .core
                .learn_stream(peer, &rid_header(ssrc, rid))
                .unwrap()
        };
        let repair = |ssrc: u32, rid: &[u8]| {
            e.ctl
                .core
                .learn_stream(peer, &rid_header_with(ssrc, 11, rid))
                .unwrap()
        };
        // A repaired RID before its layer is known teaches nothing (the relay reports again).
        assert_eq!(repair(0xC1, b"h"), StreamLearned::Ignored);
        assert_eq!(
            learn(0xA1, b"h"),
            StreamLearned::Layer {
                layer: 1,
                viewers: 1
            }
        );
        assert_eq!(
            repair(0xC1, b"h"),
            StreamLearned::Rtx {
                layer: 1,
                routes: 1
            }
        );
        assert_eq!(repair(0xC2, b"h"), StreamLearned::Ignored);
        assert_eq!(
            learn(0xA0, b"q"),
            StreamLearned::Layer {
                layer: 0,
                viewers: 1
            }
        );
        // Known SSRC, known layer on another SSRC, unknown RID, no RID, a stranger: nothing.
        assert_eq!(learn(0xA1, b"h"), StreamLearned::Ignored);
        assert_eq!(learn(0xB1, b"h"), StreamLearned::Ignored);
        assert_eq!(learn(0xB2, b"x"), StreamLearned::Ignored);
        assert_eq!(learn(0xB3, b""), StreamLearned::Ignored);
        let stranger = "192.0.2.99:1".parse().unwrap();
        let h = rid_header(0xB4, b"f");
        assert_eq!(
            e.ctl.core.learn_stream(stranger, &h).unwrap(),
            StreamLearned::Ignored
        );
        let short = [0x80, 96];
        assert_eq!(
            e.ctl.core.learn_stream(peer, &short).unwrap(),
            StreamLearned::Ignored
        );
        let layered = |e: &Env, to: u64| -> Vec<(Option<u32>, Option<u32>, u8, u8)> {
            let st = e.ctl.core.ledger().store.state().clone();
            let mut v: Vec<_> = st
                .routes
                .values()
                .filter(|r| r.from == p && r.to == to)
                .map(|r| {
                    let l = r.rewrite.layer.expect("a layered route");
                    (r.ssrc, r.rewrite.ssrc, l.index, l.count)
                })
                .collect();
            v.sort();
            v
        };
        let routes = layered(&e, v1);
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!((routes[0].0, routes[0].2, routes[0].3), (Some(0xA0), 0, 3));
        assert_eq!((routes[1].0, routes[1].2, routes[1].3), (Some(0xA1), 1, 3));
        assert!(
            routes[0].1.is_some() && routes[0].1 == routes[1].1,
            "one output SSRC"
        );
        // The viewer's caps (spatial and temporal) reach layers learned after they were set.
        let path = format!("/v1/sessions/{v1}/layer");
        let r = e.admin("PUT", &path, r#"{"max":0,"max_temporal":4}"#);
        assert_eq!(r.status, 400, "{}", body(&r));
        let r = e.admin("PUT", &path, r#"{"max":0,"max_temporal":1}"#);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert!(body(&r).contains("\"max_temporal\":1"), "{}", body(&r));
        assert_eq!(
            learn(0xA2, b"f"),
            StreamLearned::Layer {
                layer: 2,
                viewers: 1
            }
        );
        let st = e.ctl.core.ledger().store.state().clone();
        assert!(st.routes.values().all(|r| r
            .rewrite
            .layer
            .is_some_and(|l| l.max == Some(0) && l.max_temporal == Some(1))));
        // A viewer joining now gets all three layers, journalled like every route.
        let r = e.public(
            "POST",
            "/whep/demo/blue",
            Some(&view_tok),
            &offer("recvonly", 3000),
        );
        assert_eq!(r.status, 201, "{}", body(&r));
        let v2 = e.ctl.members().iter().map(|m| m.session).max().unwrap();
        let routes = layered(&e, v2);
        let ssrcs: Vec<_> = routes.iter().map(|r| (r.0, r.2)).collect();
        assert_eq!(
            ssrcs,
            vec![(Some(0xA0), 0), (Some(0xA1), 1), (Some(0xA2), 2)]
        );
        // The RTX stream of layer 1 is unwrapped on its routes into both viewers.
        let st = e.ctl.core.ledger().store.state().clone();
        let rtx: Vec<_> = st
            .routes
            .values()
            .filter_map(|r| {
                r.rewrite
                    .source_rtx
                    .map(|x| (r.ssrc, r.to, x.payload_type, x.ssrc))
            })
            .collect();
        assert_eq!(
            rtx,
            vec![(Some(0xA1), v1, 97, 0xC1), (Some(0xA1), v2, 97, 0xC1)]
        );
        assert_eq!(e.ctl.core.ledger().store.state().routes.len(), 6);
    }

    /// WHIP then WHEP: answer, Location, routes publisher → viewer with the viewer's SSRC and
    /// payload types; the viewer is never a publisher in shm; DELETE and admin removal stop it.
    #[test]
    fn whip_whep_routes_and_removal() {
        let e = env("flow");
        let pub_tok = sign(&claims("demo", "blue", Role::Host));
        let view_tok = sign(&claims("demo", "blue", Role::Viewer));
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
        let st = e.ctl.core.ledger().store.state().clone();
        assert_eq!(st.sessions[&p].role.name(), "host");
        assert_eq!(
            st.sessions[&v].role.name(),
            "viewer",
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

        // The viewer's layer cap: PATCH on its resource with JSON (docs/WEBRTC.md).
        let patch = |loc: &str, ct: &str, b: &str| {
            e.ctl.handle_public(&Request {
                method: "PATCH".into(),
                path: loc.into(),
                query: String::new(),
                headers: vec![("content-type".into(), ct.into())],
                body: b.as_bytes().to_vec(),
                peer: "tcp:127.0.0.1:5555".into(),
            })
        };
        let json_ct = "application/json";
        let bad = format!("{}x", view_loc);
        assert_eq!(patch(&bad, json_ct, r#"{"max_layer":0}"#).status, 404);
        let frag = "application/trickle-ice-sdpfrag";
        assert_eq!(patch(&view_loc, frag, "a=x").status, 415);
        // No simulcast source reaches the viewer yet.
        assert_eq!(patch(&view_loc, json_ct, r#"{"max_layer":0}"#).status, 409);
        // Two layers of the publisher routed into the viewer's output SSRC by the operator.
        for (i, ssrc) in [1001u32, 1002].into_iter().enumerate() {
            let b = json!({"from": p, "ssrc": ssrc, "to": v,
                "rewrite": {"ssrc": send_ssrc, "layer": {"index": i, "count": 2}}});
            let r = e.admin("POST", "/v1/routes", &b.to_string());
            assert_eq!(r.status, 201, "{}", body(&r));
        }
        let b = json!({"from": p, "ssrc": 1003, "to": v, "rewrite": {"layer": {"index": 0, "count": 1}}});
        assert_eq!(e.admin("POST", "/v1/routes", &b.to_string()).status, 400);
        let r = patch(&view_loc, json_ct, r#"{"max_layer":0}"#);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert!(body(&r).contains("\"routes\":2"), "{}", body(&r));
        let caps = |e: &Env| -> Vec<Option<u8>> {
            let st = e.ctl.core.ledger().store.state().clone();
            st.routes
                .values()
                .filter_map(|r| r.rewrite.layer.map(|l| l.max))
                .collect()
        };
        assert_eq!(caps(&e), vec![Some(0), Some(0)]);
        assert_eq!(patch(&view_loc, json_ct, r#"{"max_layer":3}"#).status, 400);
        // The operator lifts it through the admin API.
        let r = e.admin("PUT", &format!("/v1/sessions/{v}/layer"), r#"{"max":null}"#);
        assert_eq!(r.status, 200, "{}", body(&r));
        assert_eq!(caps(&e), vec![None, None]);
        assert_eq!(
            e.admin("PUT", &format!("/v1/sessions/{p}/layer"), r#"{"max":1}"#)
                .status,
            409
        );
        assert_eq!(
            e.admin("PUT", "/v1/sessions/999999/layer", r#"{"max":1}"#)
                .status,
            404
        );

        // DELETE with a wrong secret is refused; the right one removes the viewer and routes.
        let bad = format!("{}x", view_loc);
        assert_eq!(e.public("DELETE", &bad, None, "").status, 404);
        assert_eq!(e.public("DELETE", &view_loc, None, "").status, 200);
        let st = e.ctl.core.ledger().store.state().clone();
        assert!(st.routes.is_empty() && !st.sessions.contains_key(&v));

        // Moderator removal through the admin API.
        let r = e.admin("DELETE", &format!("/v1/sessions/{p}"), "");
        assert_eq!(r.status, 204, "{}", body(&r));
        assert!(e.ctl.members().is_empty());
        assert!(crate::core::lock(&e.ctl.ice).is_empty());
        assert_eq!(e.public("DELETE", &pub_loc, None, "").status, 404);
    }

    #[test]
    fn restart_drops_sessions_that_never_bound() {
        let (dir, shm, cfg) = env_parts("restart");
        let first = Arc::new(Control::start(cfg.clone(), Secret::new(ADMIN)).unwrap());
        add_test_key(&first);
        let tok = sign(&claims("demo", "blue", Role::Host));
        let r = first.handle_public(&req(
            "POST",
            "/whip/blue",
            Some(&tok),
            &offer("sendonly", 1),
            "tcp:127.0.0.1:2",
        ));
        assert_eq!(r.status, 201);
        assert_eq!(first.core.ledger().store.state().sessions.len(), 1);
        drop(first); // shm and the journal are the instance's own until it goes
        let e = Env {
            dir,
            shm,
            ctl: Arc::new(Control::start(cfg, Secret::new(ADMIN)).unwrap()),
        };
        assert!(e.ctl.core.ledger().store.state().sessions.is_empty());
    }

    /// One host candidate per public address, IPv4 and IPv6, on the media port.
    #[test]
    fn candidates_for_every_public_address() {
        let e = env_with(
            "cand",
            "public_addresses = [\"192.0.2.10\", \"2001:db8::10\"]",
        );
        let tok = sign(&claims("demo", "blue", Role::Viewer));
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
        let view_tok = sign(&claims("demo", "blue", Role::Viewer));
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
        // Our media SSRCs: the first of each FID group (the second is our RTX stream).
        let ssrcs: Vec<u32> = body(&r)
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc-group:FID "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(ssrcs.len(), 2, "{}", body(&r));
        for (i, ssrc) in [(0u32, 100u32), (1, 200), (2, 300)] {
            let tok = sign(&claims("demo", "blue", Role::Speaker));
            let r = e.public("POST", "/whip/blue", Some(&tok), &offer("sendonly", ssrc));
            assert_eq!(r.status, 201, "publisher {i}: {}", body(&r));
        }
        let st = e.ctl.core.ledger().store.state().clone();
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
        let host = sign(&claims("demo", "blue", Role::Host));
        let view = sign(&claims("demo", "blue", Role::Viewer));
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
            .core
            .bind_peer(bound, "127.0.0.1:50000".parse().unwrap())
            .unwrap();
        assert_eq!(e.ctl.core.ledger().store.state().routes.len(), 2);
        let t0 = clock::unix_ms();
        assert_eq!(e.ctl.core.expire_unbound_sessions(t0), 0, "not yet");
        let later = t0 + 31_000;
        assert_eq!(e.ctl.core.expire_unbound_sessions(later), 2);
        let left: Vec<u64> = e.ctl.members().iter().map(|m| m.session).collect();
        assert_eq!(left, vec![bound]);
        let st = e.ctl.core.ledger().store.state().clone();
        assert!(!st.sessions.contains_key(&p));
        assert!(st.sessions.contains_key(&bound));
        assert!(st.routes.is_empty(), "routes of expired sessions go");
        assert!(crate::core::lock(&e.ctl.ice).len() == 1);
        assert_eq!(e.ctl.core.expire_unbound_sessions(later + 60_000), 0);
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
            let mut c = claims("demo", room, Role::Viewer);
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
        let host = sign(&claims("demo", "blue", Role::Host));
        let view = sign(&claims("demo", "blue", Role::Viewer));
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
            let st = e.ctl.core.ledger().store.state().clone();
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
        let mut c = claims("demo", "blue", Role::Viewer);
        c.nbf = n + 20;
        c.iat = n;
        let r = e.public("POST", "/whep/blue", Some(&sign(&c)), &offer("recvonly", 3));
        assert_eq!(r.status, 401, "{}", body(&r));
        assert_eq!(reason(&r), "not_yet_valid");
        // Longer than the configured lifetime (well under the default 86400 s).
        let mut c = claims("demo", "blue", Role::Viewer);
        c.exp = n + 3000;
        let r = e.public("POST", "/whep/blue", Some(&sign(&c)), &offer("recvonly", 3));
        assert_eq!(r.status, 401, "{}", body(&r));
        assert_eq!(reason(&r), "lifetime_too_long");
        let c = claims("demo", "blue", Role::Viewer);
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
        let far = clock::unix_ms() + DENIED_SUPPRESSED_EVERY_MS + 1;
        assert_eq!(e.ctl.core.report_suppressed_denials(far), 200 - audited);
        assert!(e.audit().contains(&format!("\"count\":{}", 200 - audited)));
        assert_eq!(e.ctl.core.report_suppressed_denials(far + 60_000), 0);
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

    /// Room policies are bounded at the API (a day of stream-token minutes at most, a real
    /// password, domains that are domains) and the stream password is never echoed back.
    #[test]
    fn room_policy_values_are_bounded_and_passwords_never_echoed() {
        let e = env("policy-bounds");
        for (req_body, field) in [
            (
                r#"{"policy":{"stream_timeout_minutes":4294967295}}"#,
                "policy.stream_timeout_minutes",
            ),
            (
                r#"{"policy":{"stream_timeout_minutes":0}}"#,
                "policy.stream_timeout_minutes",
            ),
            (
                r#"{"policy":{"stream_password":"x"}}"#,
                "policy.stream_password",
            ),
            (
                r#"{"policy":{"stream_password":"aaaaaaaaaaaaaaaa"}}"#,
                "policy.stream_password",
            ),
            (
                r#"{"policy":{"allowed_email_domains":["evil.com@corp.example"]}}"#,
                "policy.allowed_email_domains",
            ),
        ] {
            let r = e.admin("PUT", "/v1/rooms/demo/r1", req_body);
            assert_eq!(r.status, 400, "{req_body}: {}", body(&r));
            assert!(body(&r).contains(field), "{}", body(&r));
        }
        let r = e.admin(
            "PUT",
            "/v1/rooms/demo/r1",
            r#"{"policy":{"accepted_token_kinds":["stream"],"stream_password":"correct-horse-1","stream_timeout_minutes":1440}}"#,
        );
        assert_eq!(r.status, 200, "{}", body(&r));
        for (method, path) in [
            ("PUT", "/v1/rooms/demo/r1"),
            ("GET", "/v1/rooms/demo/r1"),
            ("GET", "/v1/rooms"),
            ("GET", "/v1/apps"),
        ] {
            let req_body = if method == "PUT" {
                r#"{"policy":{"accepted_token_kinds":["stream"],"stream_password":"correct-horse-1"}}"#
            } else {
                ""
            };
            let t = body(&e.admin(method, path, req_body));
            assert!(
                !t.contains("correct-horse-1"),
                "{method} {path} echoes the password: {t}"
            );
        }
        let t = body(&e.admin("GET", "/v1/rooms/demo/r1", ""));
        assert!(t.contains(r#""stream_password_set":true"#), "{t}");
    }

    /// Without credentials nobody learns which applications exist: a stream token, or a
    /// signed token under an unknown key, gets the same answer for an application that exists
    /// and for one that does not.
    #[test]
    fn unknown_and_existing_applications_answer_alike() {
        let e = env("enumerate");
        let whep = offer("recvonly", 0);
        let md5 = "0".repeat(32);
        let ghost = DevKey::new("k1", b"not-the-demo-key-0123456789abcdefgh").unwrap();
        let forged = token::mint(&ghost, &claims("demo", "blue", Role::Viewer));
        let forged_ghost = token::mint(&ghost, &claims("no-such-app", "blue", Role::Viewer));
        for (a, b) in [
            (
                ("/whep/demo/blue", md5.clone()),
                ("/whep/no-such-app/blue", md5.clone()),
            ),
            (
                ("/whep/demo/blue", forged),
                ("/whep/no-such-app/blue", forged_ghost),
            ),
        ] {
            let ra = e.public("POST", a.0, Some(&a.1), &whep);
            let rb = e.public("POST", b.0, Some(&b.1), &whep);
            assert_eq!(
                (ra.status, reason(&ra)),
                (rb.status, reason(&rb)),
                "{} vs {}",
                body(&ra),
                body(&rb)
            );
            assert!(ra.status == 401 || ra.status == 403, "{}", body(&ra));
        }
    }

    /// Names from the URL are validated before anything is audited: an e-mail address or
    /// kilobytes in place of an application or room name never reach the audit log.
    #[test]
    fn invalid_names_are_refused_before_the_audit() {
        let e = env("names");
        let whep = offer("recvonly", 0);
        let long = "r".repeat(5000);
        for path in [
            "/whep/alice@example.com/blue".to_string(),
            format!("/whep/demo/{long}"),
        ] {
            let r = e.public("POST", &path, None, &whep);
            assert_eq!(r.status, 404, "{path}: {}", body(&r));
        }
        let audit = e.audit();
        assert!(!audit.contains("alice@example.com"), "{audit}");
        assert!(!audit.contains(&long[..100]), "a long name was logged");
    }

    /// `control.max_ssrcs_per_media` bounds what one WHIP offer may announce: the usual pair
    /// (a stream and its RTX) passes, a third SSRC is a 400.
    #[test]
    fn ssrc_caps_come_from_config() {
        let e = env_with(
            "ssrc-cap",
            "max_ssrcs_per_media = 2\nmax_ssrcs_per_offer = 2",
        );
        let token = sign(&claims("demo", "blue", Role::Host));
        let ok = offer("sendonly", 100);
        let r = e.public("POST", "/whip/demo/blue", Some(&token), &ok);
        assert_eq!(r.status, 201, "{}", body(&r));
        let three = offer("sendonly", 200).replace(
            "a=ssrc:201 cname:x\r\n",
            "a=ssrc:201 cname:x\r\na=ssrc:202 cname:x\r\n",
        );
        let r = e.public("POST", "/whip/demo/blue", Some(&token), &three);
        assert_eq!(r.status, 400, "{}", body(&r));
        assert!(body(&r).contains("too many SSRCs"), "{}", body(&r));
    }
}
