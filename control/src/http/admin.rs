//! The admin REST API (docs/API.md): routing of `/healthz`, `/metrics` and `/v1/…`, bearer
//! token authentication, and the sessions, routes, status, stats and drain endpoints, with the
//! per-session diagnostics the relay workers publish (`/v1/sessions/{id}/stats`,
//! `/v1/streams`). Each handler parses the request, calls the core, answers and audits the
//! answer.
//!
//! May not touch: shm writes and the journal (the core does; handlers only read the relay's
//! counters and statistics through the ledger's reader, which never blocks the relay),
//! sockets (the server hands requests in). WebRTC endpoints are in [`super::whip`],
//! applications and rooms in [`super::apps_api`].

use super::body::{
    parse_id, parse_key, parse_max_layer, parse_max_temporal, parse_peer, parse_rewrite, Body,
};
use super::health::{self, RelayHealth};
use super::metrics;
use super::{audit_response, error_response, Request, Response};
use crate::api::Control;
use crate::clock;
use crate::core::denials::Denial;
use crate::core::sessions::{NewIce, NewRoute, NewSession};
use crate::core::CoreError;
use crate::secrets;
use crate::state::{RewriteSpec, StoredRoute, StoredSession};
use contract::shm::{
    session_flags, Role, SessionStats, ShmReader, ShmWriter, StreamDir, StreamStats,
};
use contract::srtp::Profile;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The answer of a handler: a success, or the refusal the core (or a parser) gave.
fn answer(r: Result<Response, CoreError>) -> Response {
    r.unwrap_or_else(|e| error_response(&e))
}

impl Control {
    /// Answer `r` and audit the answer as an admin action.
    fn audited(&self, action: &str, ids: Value, r: Result<Response, CoreError>) -> Response {
        let resp = answer(r);
        audit_response(&self.core, "admin", action, ids, &resp);
        resp
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(h) = req.header("authorization") else {
            return false;
        };
        let Some(tok) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        else {
            return false;
        };
        let token = self.admin_token();
        secrets::ct_eq(tok.trim().as_bytes(), token.expose().as_bytes())
    }

    /// Serve one admin request.
    pub fn handle_admin(&self, req: &Request) -> Response {
        let path = req.path.trim_end_matches('/');
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let m = req.method.as_str();
        if self.public_on_admin() {
            if let Some(r) = self.handle_webrtc(req) {
                return r;
            }
        }
        match segs.as_slice() {
            ["healthz"] => return only_get(m, || self.healthz()),
            ["readyz"] => return only_get(m, || self.readyz()),
            ["metrics"] => return only_get(m, || self.metrics()),
            ["v1", ..] => {}
            _ => return Response::error(404, format!("no such endpoint: {}", req.path)),
        }
        if !self.authorized(req) {
            let mut r = Response::error(401, "missing or invalid admin token");
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
            // Unauthenticated: through the same counted, rate-limited path as refused joins.
            let d = Denial {
                action: "auth.failed",
                target: [("method", &req.method), ("path", &req.path)],
                reason: "bad_admin_token",
                from: self.core.audit.hasher.hash_client(&req.peer),
                status: r.status,
                message: "missing or invalid admin token".into(),
            };
            self.core.record_denial(d, clock::unix_ms());
            return r;
        }
        match (m, &segs[1..]) {
            ("GET" | "HEAD", ["status"]) => self.status(),
            ("GET" | "HEAD", ["stats"]) => self.stats(),
            ("GET" | "HEAD", ["cluster"]) => self.cluster_status(),
            ("GET" | "HEAD", ["sessions"]) => self.list_sessions(),
            ("POST", ["sessions"]) => self.create_session(req),
            ("GET" | "HEAD", ["sessions", id]) => self.get_session(id),
            ("GET" | "HEAD", ["sessions", id, "stats"]) => self.session_stats(id),
            ("GET" | "HEAD", ["streams"]) => self.list_streams(),
            ("DELETE", ["sessions", id]) => self.delete_session(id),
            ("POST", ["sessions", id, "rekey"]) => self.rekey(req, id),
            ("PUT", ["sessions", id, "layer"]) => self.set_layer(req, id),
            ("GET" | "HEAD", ["routes"]) => self.list_routes(),
            ("POST", ["routes"]) => self.create_route(req),
            ("GET" | "HEAD", ["routes", id]) => self.get_route(id),
            ("DELETE", ["routes", id]) => self.delete_route(id),
            ("POST", ["drain"]) => self.drain(),
            ("POST", ["undrain"]) => self.undrain(),
            (_, ["apps" | "rooms" | "tokens", ..]) => self.handle_apps_api(m, &segs[1..], req),
            (_, ["status" | "stats" | "streams" | "cluster"] | ["sessions", _, "stats"]) => {
                method_not_allowed("GET")
            }
            (_, ["sessions" | "routes"]) => method_not_allowed("GET, POST"),
            (_, ["sessions" | "routes", _]) => method_not_allowed("GET, DELETE"),
            (_, ["sessions", _, "rekey"] | ["drain"] | ["undrain"]) => method_not_allowed("POST"),
            (_, ["sessions", _, "layer"]) => method_not_allowed("PUT"),
            _ => Response::error(404, format!("no such endpoint: {}", req.path)),
        }
    }

    /// Serve one request on the public listener (when it differs from the admin one).
    pub fn handle_public(&self, req: &Request) -> Response {
        if let Some(r) = self.handle_webrtc(req) {
            return r;
        }
        match req.path.trim_end_matches('/') {
            "/healthz" => only_get(&req.method, || self.healthz()),
            "/readyz" => only_get(&req.method, || self.readyz()),
            _ => Response::error(404, format!("no such endpoint: {}", req.path)),
        }
    }

    fn healthz(&self) -> Response {
        health::healthz(self.core.shm_ready(), self.core.is_draining())
    }

    fn readyz(&self) -> Response {
        let (shm, relay) = {
            let g = self.core.ledger();
            let relay = g
                .reader
                .as_ref()
                .map(|r| RelayHealth::read(r, clock::unix_ms()));
            (g.shm.is_some(), relay)
        };
        health::readyz(shm, relay.as_ref(), self.core.is_draining())
    }

    fn status(&self) -> Response {
        // The applications lock is never taken while the ledger lock is held.
        let demo = self.core.demo_app().is_some();
        let cfg = self.config();
        let g = self.core.ledger();
        let relay = relay_view(g.reader.as_ref(), clock::unix_ms());
        let u = self.urls();
        let backend = relay["backend"]
            .as_str()
            .map_or_else(|| cfg.relay.backend.name().to_string(), str::to_string);
        let workers = relay["workers"]
            .as_u64()
            .unwrap_or(u64::from(cfg.relay.workers));
        Response::json(
            200,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "media_addr": u.media_addr,
                "admin_url": u.admin_url,
                "public_url": u.public_url,
                "metrics_url": u.metrics_url,
                "backend": backend,
                "workers": workers,
                "relay": relay,
                "sessions": g.store.state().sessions.len(),
                "routes": g.store.state().routes.len(),
                "draining": self.core.is_draining(),
                "demo": demo,
                "generation": g.shm.as_ref().map(ShmWriter::generation),
                "shm": {"path": cfg.shm.path.display().to_string(), "ready": g.shm.is_some(), "error": g.shm_error},
            }),
        )
    }

    /// `GET /v1/cluster`: the registry's nodes and rooms with their owners; 404 on a single
    /// node, 503 with `cluster_unavailable` while Redis cannot be reached.
    fn cluster_status(&self) -> Response {
        let Some(c) = self.cluster.get() else {
            return Response::json(
                404,
                &json!({"error": "this node is not in a cluster (no [cluster] section)",
                    "reason": "not_clustered"}),
            );
        };
        match c.status() {
            Ok(mut v) => {
                v["trunks"] = c.trunks_status(&self.core);
                Response::json(200, &v)
            }
            Err(e) => Response::json(
                503,
                &json!({"error": e.to_string(), "reason": e.reason(),
                    "node_id": c.node_id(), "redis": "down"}),
            ),
        }
    }

    fn stats(&self) -> Response {
        let g = self.core.ledger();
        let Some(r) = g.reader.as_ref() else {
            return error_response(&g.shm_unavailable());
        };
        Response::json(
            200,
            &metrics::stats_json(
                r,
                self.slow_path_stats.snapshot().datagrams(),
                self.core.audit.errors(),
            ),
        )
    }

    fn metrics(&self) -> Response {
        // The agent's lock is never held together with the ledger lock.
        let (ice, ice_sessions) = {
            let a = crate::core::lock(&self.ice);
            (a.counters(), a.len() as u64)
        };
        let g = self.core.ledger();
        let info = metrics::ControlGauges {
            sessions: g.store.state().sessions.len() as u64,
            routes: g.store.state().routes.len() as u64,
            draining: self.core.is_draining(),
            shm_ready: g.shm.is_some(),
            generation: g.shm.as_ref().map_or(0, ShmWriter::generation),
            audit_errors: self.core.audit.errors(),
            slow_path: self.slow_path_stats.snapshot(),
            ice,
            ice_sessions,
            now_unix_ms: clock::unix_ms(),
        };
        let mut text = metrics::render(g.reader.as_ref(), &info);
        drop(g);
        text.push_str(&metrics::render_webrtc(&self.core));
        text.push_str(&self.http_stats.render());
        if let Some(c) = self.cluster.get() {
            text.push_str(&c.render_metrics());
        }
        Response::text(200, "text/plain; version=0.0.4; charset=utf-8", text)
    }

    /// Every session with its room (WebRTC participants) and its counters summed over the
    /// relay workers (`stats` is null while shm is not open).
    fn list_sessions(&self) -> Response {
        // Lock order: the members before the ledger.
        let rooms = self.rooms_by_session();
        let now = clock::unix_ms();
        let g = self.core.ledger();
        let diag = g.reader.as_ref().map(|r| r.diagnostics().0);
        let v: Vec<Value> = g
            .store
            .state()
            .sessions
            .values()
            .map(|s| {
                let mut j = session_json(s);
                add_room(&mut j, rooms.get(&s.id));
                j["stats"] = diag.as_ref().map_or(Value::Null, |d| {
                    stats_json(s, d.sessions.get(&s.id).map(|x| &x.totals), now)
                });
                j
            })
            .collect();
        Response::json(200, &Value::Array(v))
    }

    /// (app, room) of every WebRTC participant, by session id.
    fn rooms_by_session(&self) -> BTreeMap<u64, (String, String)> {
        self.core
            .members()
            .into_iter()
            .map(|m| (m.session, (m.app, m.room)))
            .collect()
    }

    /// One session with everything the relay knows about it: counters summed over workers,
    /// the workers that handle it, and its streams with their reception statistics.
    fn session_stats(&self, id: &str) -> Response {
        answer((|| {
            let id = parse_id(id, "session")?;
            let rooms = self.rooms_by_session();
            let now = clock::unix_ms();
            let g = self.core.ledger();
            let Some(s) = g.store.state().sessions.get(&id).cloned() else {
                return Err(CoreError::SessionNotFound(id));
            };
            let r = g.reader.as_ref().ok_or_else(|| g.shm_unavailable())?;
            let (diag, scan) = r.diagnostics();
            drop(g);
            let d = diag.sessions.get(&id);
            let mut j = session_json(&s);
            add_room(&mut j, rooms.get(&id));
            j["stats"] = stats_json(&s, d.map(|x| &x.totals), now);
            j["workers"] = json!(d.map_or(&[][..], |x| &x.workers[..]));
            j["streams"] = Value::Array(
                d.map_or(&[][..], |x| &x.streams[..])
                    .iter()
                    .map(|st| stream_json(st, d.map_or(0, |x| x.totals.downlink_bps), now))
                    .collect(),
            );
            j["stale_records"] = json!(diag.stale);
            j["unreadable_records"] = json!(scan.invalid + scan.busy);
            Ok(Response::json(200, &j))
        })())
    }

    /// Every stream of every session, flat (`sluicectl stats --streams`).
    fn list_streams(&self) -> Response {
        let now = clock::unix_ms();
        let g = self.core.ledger();
        let Some(r) = g.reader.as_ref() else {
            return error_response(&g.shm_unavailable());
        };
        let (diag, _) = r.diagnostics();
        drop(g);
        let v: Vec<Value> = diag
            .sessions
            .values()
            .flat_map(|d| {
                let est = d.totals.downlink_bps;
                d.streams.iter().map(move |st| stream_json(st, est, now))
            })
            .collect();
        Response::json(200, &Value::Array(v))
    }

    fn get_session(&self, id: &str) -> Response {
        answer((|| {
            let s = self.core.session(parse_id(id, "session")?)?;
            Ok(Response::json(200, &session_json(&s)))
        })())
    }

    fn list_routes(&self) -> Response {
        let v: Vec<Value> = self.core.state().routes.values().map(route_json).collect();
        Response::json(200, &Value::Array(v))
    }

    fn get_route(&self, id: &str) -> Response {
        answer((|| {
            let r = self.core.route(parse_id(id, "route")?)?;
            Ok(Response::json(200, &route_json(&r)))
        })())
    }

    fn create_session(&self, req: &Request) -> Response {
        let mut ids = json!({});
        let r = (|| {
            let b = Body::parse(
                &req.body,
                &[
                    "peer", "profile", "rx_key", "tx_key", "role", "max_pps", "ice",
                ],
            )?;
            let ice: Option<NewIce> = b.opt_serde("ice")?;
            let peer = match (b.opt_str("peer")?, &ice) {
                (Some(p), _) => Some(parse_peer(p)?),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(CoreError::invalid("peer", "is required (without ice)"))
                }
            };
            if let Some(p) = peer {
                ids["peer"] = Value::String(self.core.audit.hasher.hash(&p.to_string()));
            }
            let profile_name = b.req_str("profile")?;
            let profile = Profile::from_name(profile_name).map_err(|_| {
                CoreError::invalid("profile", format!("unknown SRTP profile `{profile_name}`"))
            })?;
            let n = NewSession {
                peer,
                profile,
                rx_key: parse_key(profile, &b, "rx_key")?,
                tx_key: parse_key(profile, &b, "tx_key")?,
                role: match b.opt_str("role")? {
                    None => Role::Trunk,
                    Some(s) => Role::from_name(s)
                        .ok_or_else(|| CoreError::invalid("role", format!("unknown role `{s}`")))?,
                },
                max_pps: b.opt_u32("max_pps")?.unwrap_or(0),
                ice,
            };
            let s = self.core.create_session(n, clock::unix_ms(), &mut ids)?;
            let mut j = session_json(&s);
            // The password is shown once, to whoever created the session.
            if let Some(i) = &s.ice {
                j["ice"]["pwd"] = json!(i.pwd);
            }
            Ok(Response::json(201, &j))
        })();
        self.audited("session.create", ids, r)
    }

    fn delete_session(&self, id: &str) -> Response {
        self.delete("session", id, |id, ids| self.core.delete_session(id, ids))
    }

    /// `DELETE` of a session or route (`what`) by its id, audited as `<what>.delete`.
    fn delete(
        &self,
        what: &str,
        id: &str,
        delete: impl FnOnce(u64, &mut Value) -> Result<(), CoreError>,
    ) -> Response {
        let mut ids = json!({});
        let r = (|| {
            let id = parse_id(id, what)?;
            ids[what] = json!(id);
            delete(id, &mut ids)?;
            Ok(Response::empty(204))
        })();
        self.audited(&format!("{what}.delete"), ids, r)
    }

    fn rekey(&self, req: &Request, id: &str) -> Response {
        let mut ids = json!({});
        let r = (|| {
            let id = parse_id(id, "session")?;
            ids["session"] = json!(id);
            let b = Body::parse(&req.body, &["tx_key", "rx_key"])?;
            // Keys are parsed in the session's profile, with no lock held.
            let profile = self.core.session(id)?.profile;
            let key = |k: &str| b.has(k).then(|| parse_key(profile, &b, k)).transpose();
            let (tx, rx) = (key("tx_key")?, key("rx_key")?);
            let s = self.core.rekey(id, tx, rx, &mut ids)?;
            Ok(Response::json(200, &session_json(&s)))
        })();
        self.audited("session.rekey", ids, r)
    }

    /// `PUT /v1/sessions/{id}/layer` `{"max": 0..=2 | null, "max_temporal": 0..=3 | null}`:
    /// the highest simulcast layer and VP8 temporal layer the session receives on every
    /// layered route into it (absent or null: no cap); answers the routes changed.
    fn set_layer(&self, req: &Request, id: &str) -> Response {
        let mut ids = json!({});
        let r = (|| {
            let id = parse_id(id, "session")?;
            ids["session"] = json!(id);
            let b = Body::parse(&req.body, &["max", "max_temporal"])?;
            let max = match b.get("max") {
                // Absent or null: no cap.
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_max_layer(v, "max")?),
            };
            let max_temporal = match b.get("max_temporal") {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_max_temporal(v, "max_temporal")?),
            };
            ids["max"] = json!(max);
            ids["max_temporal"] = json!(max_temporal);
            let routes = self.core.set_max_layer(id, max, max_temporal)?;
            let v: Vec<Value> = routes.iter().map(route_json).collect();
            Ok(Response::json(
                200,
                &json!({"session": id, "max": max, "max_temporal": max_temporal, "routes": v}),
            ))
        })();
        self.audited("session.layer", ids, r)
    }

    fn create_route(&self, req: &Request) -> Response {
        let mut ids = json!({});
        let r = (|| {
            let b = Body::parse(&req.body, &["from", "ssrc", "to", "rewrite"])?;
            let from = b.req_u64("from")?;
            let to = b.req_u64("to")?;
            ids["from"] = json!(from);
            ids["to"] = json!(to);
            let ssrc = b.opt_u32("ssrc")?;
            let rewrite = match b.get("rewrite") {
                None => RewriteSpec::default(),
                Some(v) => parse_rewrite(v)?,
            };
            check_rtx(ssrc, &rewrite)?;
            // A simulcast layer feeds one output stream: it names its source SSRC and the
            // SSRC the subscriber sees.
            if rewrite.layer.is_some() && (ssrc.is_none() || rewrite.ssrc.is_none()) {
                return Err(CoreError::invalid(
                    "rewrite.layer",
                    "needs `ssrc` (the layer's) and `rewrite.ssrc` (the subscriber's)",
                ));
            }
            let n = NewRoute {
                from,
                to,
                ssrc,
                rewrite,
            };
            let route = self.core.create_route(n, &mut ids)?;
            Ok(Response::json(201, &route_json(&route)))
        })();
        self.audited("route.create", ids, r)
    }

    fn delete_route(&self, id: &str) -> Response {
        self.delete("route", id, |id, _| self.core.delete_route(id))
    }

    fn undrain(&self) -> Response {
        self.core.undrain();
        let resp = Response::json(200, &json!({"draining": false}));
        audit_response(&self.core, "admin", "undrain", json!({}), &resp);
        resp
    }

    fn drain(&self) -> Response {
        self.core.drain();
        let resp = Response::json(202, &json!({"draining": true}));
        audit_response(&self.core, "admin", "drain", json!({}), &resp);
        resp
    }
}

/// The relay as its heartbeats show it at `now`.
fn relay_view(reader: Option<&ShmReader>, now: u64) -> Value {
    let Some(r) = reader else {
        return json!({"pid": null, "up": false, "backend": null, "workers": null,
            "workers_up": null, "stale_workers": [], "heartbeat_age_ms": null});
    };
    let info = r.relay_info();
    let h = RelayHealth::read(r, now);
    let reported = info.pid != 0;
    json!({
        "pid": reported.then_some(info.pid),
        "up": h.up(),
        "backend": reported.then_some(info.backend),
        "workers": reported.then_some(info.workers),
        "workers_up": reported.then_some(h.workers_up),
        "stale_workers": h.stale_workers,
        "heartbeat_age_ms": h.newest_age_ms,
    })
}

pub(super) fn only_get(method: &str, f: impl FnOnce() -> Response) -> Response {
    if method == "GET" || method == "HEAD" {
        f()
    } else {
        method_not_allowed("GET")
    }
}

pub(super) fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Response::error(405, format!("method not allowed (allowed: {allow})"));
    r.headers.push(("Allow", allow.to_string()));
    r
}

fn session_json(s: &StoredSession) -> Value {
    json!({
        "id": s.id,
        "peer": contract::wire::peer_to_string(&s.peer),
        "profile": s.profile.name(),
        "role": s.role.name(),
        "key_epoch": s.key_epoch,
        "flags": s.flags,
        "max_pps": s.max_pps,
        "created_unix_ms": s.created_unix_ms,
        "ice": s.ice.as_ref().map(|i| json!({"ufrag": i.ufrag, "remote_ufrag": i.remote_ufrag})),
    })
}

/// A session without a room gets `"app": null, "room": null`.
fn add_room(j: &mut Value, room: Option<&(String, String)>) {
    j["app"] = json!(room.map(|r| &r.0));
    j["room"] = json!(room.map(|r| &r.1));
}

/// How recent the session's traffic is: `pending` (its peer is not confirmed yet), `new`
/// (nothing in or out yet), `active` (a packet either way within [`ACTIVE_WITHIN_MS`]) or
/// `idle`.
fn activity(s: &StoredSession, t: Option<&SessionStats>, now: u64) -> &'static str {
    if s.flags & session_flags::PENDING != 0 {
        return "pending";
    }
    let last = t.map_or(0, |t| t.last_in_unix_ms.max(t.last_out_unix_ms));
    if last == 0 {
        "new"
    } else if now.saturating_sub(last) <= ACTIVE_WITHIN_MS {
        "active"
    } else {
        "idle"
    }
}

/// A session is `active` while a packet went either way this recently.
const ACTIVE_WITHIN_MS: u64 = 5_000;

/// A time in unix ms and its age at `now` (both null for 0 = never).
fn when(ms: u64, now: u64) -> (Value, Value) {
    if ms == 0 {
        (Value::Null, Value::Null)
    } else {
        (json!(ms), json!(now.saturating_sub(ms)))
    }
}

/// The counters of one session summed over the workers (zeros when no worker saw it).
fn stats_json(s: &StoredSession, t: Option<&SessionStats>, now: u64) -> Value {
    let z = SessionStats::default();
    let c = t.unwrap_or(&z);
    let (last_in, in_age) = when(c.last_in_unix_ms, now);
    let (last_out, out_age) = when(c.last_out_unix_ms, now);
    json!({
        "state": activity(s, t, now),
        "packets_in": c.packets_in,
        "bytes_in": c.bytes_in,
        "packets_out": c.packets_out,
        "bytes_out": c.bytes_out,
        "auth_failures": c.auth_failures,
        "replays": c.replays,
        "last_in_unix_ms": last_in,
        "last_in_age_ms": in_age,
        "last_out_unix_ms": last_out,
        "last_out_age_ms": out_age,
        "published_unix_ms": when(c.published_unix_ms, now).0,
        "downlink_bps": (c.downlink_bps != 0).then_some(c.downlink_bps),
    })
}

/// One stream; received streams carry their RFC 3550 reception statistics, sent streams the
/// downlink estimate towards their session (`downlink_bps`, 0: none) and, when a simulcast
/// source feeds them, their layer state.
fn stream_json(st: &StreamStats, downlink_bps: u64, now: u64) -> Value {
    let (last, age) = when(st.last_unix_ms, now);
    let dir = match st.dir {
        StreamDir::In => "in",
        StreamDir::Out | StreamDir::RtcpOut => "out",
    };
    let reception = st.reception.map_or(Value::Null, |r| {
        let known = r.clock_rate != 0;
        let loss = if r.expected == 0 {
            0.0
        } else {
            r.cumulative_lost.max(0) as f64 / f64::from(r.expected)
        };
        json!({
            "extended_highest_seq": r.extended_highest,
            "expected": r.expected,
            "received": r.received,
            "cumulative_lost": r.cumulative_lost,
            "loss_fraction": loss,
            "fraction_lost_recent": f64::from(r.fraction_lost) / 256.0,
            "clock_rate": known.then_some(r.clock_rate),
            "jitter_rtp": known.then_some(r.jitter_rtp),
            "jitter_ms": known.then(|| f64::from(r.jitter_us) / 1000.0),
        })
    });
    json!({
        "session": st.session,
        "ssrc": st.ssrc,
        "direction": dir,
        "packets": st.packets,
        "bytes": st.bytes,
        "last_unix_ms": last,
        "last_age_ms": age,
        "reception": reception,
        "downlink_bps": (st.dir != StreamDir::In && downlink_bps != 0).then_some(downlink_bps),
        "layer": st.layer.map(|l| json!({
            "current": l.current,
            "target": l.target,
            "count": l.count,
            "switches": l.switches,
            "switch_ms_last": l.switch_ms_last,
            "switch_ms_max": l.switch_ms_max,
        })),
    })
}

/// One RTX stream pairs with one media stream (RFC 4588 §8): `rewrite.rtx` needs a route that
/// carries one stream (an SSRC filter or a rewritten SSRC), `rewrite.source_rtx` an SSRC
/// filter (the publisher stream it repairs); neither RTX SSRC may be the media stream's own.
fn check_rtx(ssrc: Option<u32>, rw: &RewriteSpec) -> Result<(), CoreError> {
    if let Some(x) = rw.rtx {
        let Some(out) = rw.ssrc.or(ssrc) else {
            return Err(CoreError::invalid(
                "rewrite.rtx",
                "needs a single-stream route: give `ssrc` or `rewrite.ssrc`",
            ));
        };
        if x.ssrc == out {
            return Err(CoreError::invalid(
                "rewrite.rtx.ssrc",
                "must differ from the stream's own SSRC (RFC 4588 §5: RTX has its own SSRC)",
            ));
        }
    }
    if let Some(x) = rw.source_rtx {
        let Some(src) = ssrc else {
            return Err(CoreError::invalid(
                "rewrite.source_rtx",
                "needs an SSRC filter: give `ssrc` (the publisher stream it repairs)",
            ));
        };
        if x.ssrc == src {
            return Err(CoreError::invalid(
                "rewrite.source_rtx.ssrc",
                "must differ from `ssrc` (RFC 4588 §5: RTX has its own SSRC)",
            ));
        }
    }
    Ok(())
}

fn route_json(r: &StoredRoute) -> Value {
    json!({
        "id": r.id,
        "from": r.from,
        "ssrc": r.ssrc,
        "to": r.to,
        "rewrite": {
            "ssrc": r.rewrite.ssrc,
            "pt_map": r.rewrite.pt_map,
            "ext_map": r.rewrite.ext_map,
            "mid": r.rewrite.mid,
            "rtx": r.rewrite.rtx,
            "source_rtx": r.rewrite.source_rtx,
            "twcc_id": r.rewrite.twcc_id,
            "keyframe": r.rewrite.keyframe,
            "layer": r.rewrite.layer,
            "dd_id": r.rewrite.dd_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RtxSpec;

    fn rtx(payload_type: u8, ssrc: u32) -> Option<RtxSpec> {
        Some(RtxSpec { payload_type, ssrc })
    }

    fn field(r: Result<(), CoreError>) -> String {
        match r {
            Err(CoreError::Invalid { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    /// RTX pairs with one stream: the subscriber's needs a single-stream route, the
    /// publisher's an SSRC filter, and neither may reuse the stream's own SSRC.
    #[test]
    fn rtx_streams_are_checked_against_the_route() {
        let ok = RewriteSpec {
            ssrc: Some(5000),
            rtx: rtx(97, 5001),
            source_rtx: rtx(97, 2222),
            ..RewriteSpec::default()
        };
        assert!(check_rtx(Some(1111), &ok).is_ok());
        let sub_only = RewriteSpec {
            rtx: rtx(97, 5001),
            ..RewriteSpec::default()
        };
        assert!(
            check_rtx(Some(1111), &sub_only).is_ok(),
            "the SSRC filter is enough"
        );
        assert_eq!(field(check_rtx(None, &sub_only)), "rewrite.rtx");
        let same = RewriteSpec {
            ssrc: Some(5001),
            ..sub_only.clone()
        };
        assert_eq!(field(check_rtx(Some(1111), &same)), "rewrite.rtx.ssrc");
        let src = RewriteSpec {
            source_rtx: rtx(97, 2222),
            ..RewriteSpec::default()
        };
        assert_eq!(field(check_rtx(None, &src)), "rewrite.source_rtx");
        assert_eq!(
            field(check_rtx(Some(2222), &src)),
            "rewrite.source_rtx.ssrc"
        );
        assert!(check_rtx(Some(1111), &src).is_ok());
    }
}
