//! The admin API for applications, developer keys, rooms and tokens (`/v1/apps`,
//! `/v1/rooms`, `/v1/tokens`): each request is parsed, applied to the core's application
//! registry (persisted at once) and audited; removing an application or a room removes its
//! participants through the core.

use super::admin::method_not_allowed;
use super::body::Body;
use super::whip::{valid_segment, DEFAULT_TOKEN_TTL};
use super::{audit_response, error_response, Request, Response};
use crate::api::Control;
use crate::clock;
use crate::core::join::random_hex;
use crate::core::rooms::Apps;
use crate::core::CoreError;
use crate::webrtc::apps::Registry;
use crate::webrtc::token::{self, token_role, Claims, DevKey, RoomPolicy};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use contract::shm::Role;
use serde_json::{json, Value};

fn answer(r: Result<Response, CoreError>) -> Response {
    r.unwrap_or_else(|e| error_response(&e))
}

impl Control {
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
            ("DELETE", ["apps", id]) => ("app.delete", json!({"app": id}), self.delete_app(id)),
            ("GET" | "HEAD", ["apps", id, "keys"]) => return self.list_keys(id),
            ("POST", ["apps", id, "keys"]) => {
                ("key.create", json!({"app": id}), self.create_key(id, req))
            }
            ("DELETE", ["apps", id, "keys", kid]) => (
                "key.delete",
                json!({"app": id, "kid": kid}),
                self.delete_key(id, kid),
            ),
            ("GET" | "HEAD", ["rooms"]) => return self.list_rooms(),
            ("GET" | "HEAD", ["rooms", app, room]) => return self.get_room(app, room),
            ("PUT" | "POST", ["rooms", app, room]) => (
                "room.policy",
                json!({"app": app, "room": room}),
                self.put_room(app, room, req),
            ),
            ("DELETE", ["rooms", app, room]) => (
                "room.delete",
                json!({"app": app, "room": room}),
                self.delete_room(app, room),
            ),
            ("POST", ["tokens"]) => ("token.mint", json!({}), self.mint_api(req)),
            (_, ["apps" | "rooms"]) => return method_not_allowed("GET, POST"),
            _ => return Response::error(404, format!("no such endpoint: {}", req.path)),
        };
        audit_response(&self.core, "admin", action, ids, &r);
        r
    }

    /// Remove something from the application registry (a missing one is "not found") and
    /// persist the registry.
    fn remove_from_registry<T, E: std::fmt::Display>(
        &self,
        remove: impl FnOnce(&mut Registry) -> Result<T, E>,
    ) -> Result<(), CoreError> {
        let mut a = self.core.apps();
        remove(&mut a.reg).map_err(|e| CoreError::NotFound(e.to_string()))?;
        a.save()
    }

    fn list_apps(&self) -> Response {
        let a = self.core.apps();
        let v: Vec<Value> = a
            .reg
            .apps
            .iter()
            .map(|(id, app)| {
                json!({"id": id, "created_unix": app.created_unix,
                    "keys": app.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
                    "rooms": app.rooms.len(), "default_policy": app.default_policy.public_json()})
            })
            .collect();
        Response::json(200, &json!({ "apps": v }))
    }

    fn create_app(&self, req: &Request) -> Response {
        answer((|| {
            let b = Body::parse(&req.body, &["id", "policy"])?;
            let id = b.req_str("id")?.to_string();
            let policy = valid_policy(b.opt_serde::<RoomPolicy>("policy")?)?;
            let mut a = self.core.apps();
            let now = clock::unix_ms() / 1000;
            a.reg
                .add_app(&id, now)
                .map_err(|e| CoreError::Conflict(e.to_string()))?;
            if let Some(p) = policy {
                let _ = a.reg.set_default_policy(&id, p);
            }
            let Apps { reg, master, .. } = &mut *a;
            let k = reg
                .generate_key(&id, "k1", master, now)
                .map_err(|e| CoreError::Internal(e.to_string()))?;
            a.save()?;
            Ok(Response::json(
                201,
                &json!({"id": id, "key": {"kid": k.kid(), "secret": URL_SAFE_NO_PAD.encode(k.secret())}}),
            ))
        })())
    }

    /// Remove the application, then its participants.
    fn delete_app(&self, id: &str) -> Response {
        answer((|| {
            self.remove_from_registry(|reg| reg.remove_app(id))?;
            self.core.remove_members_of(id, None);
            Ok(Response::empty(204))
        })())
    }

    fn list_keys(&self, id: &str) -> Response {
        let a = self.core.apps();
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
        answer((|| {
            let b = Body::parse_or_empty(&req.body, &["kid", "secret"])?;
            let mut a = self.core.apps();
            let Some(app) = a.reg.app(id) else {
                return Err(CoreError::NotFound(format!("application `{id}` not found")));
            };
            let kid = match b.opt_str("kid")? {
                Some(k) => k.to_string(),
                None => format!("k{}", app.keys.len() + 1),
            };
            let now = clock::unix_ms() / 1000;
            let Apps { reg, master, .. } = &mut *a;
            let key = match b.opt_str("secret")? {
                Some(s) => {
                    let k = dev_key_from_base64(&kid, s)?;
                    reg.add_key(id, &k, master, now)
                        .map_err(|e| CoreError::Conflict(e.to_string()))?;
                    k
                }
                None => reg
                    .generate_key(id, &kid, master, now)
                    .map_err(|e| CoreError::Conflict(e.to_string()))?,
            };
            a.save()?;
            Ok(Response::json(
                201,
                &json!({"app": id, "kid": key.kid(), "secret": URL_SAFE_NO_PAD.encode(key.secret())}),
            ))
        })())
    }

    fn delete_key(&self, id: &str, kid: &str) -> Response {
        answer((|| {
            self.remove_from_registry(|reg| reg.remove_key(id, kid))?;
            Ok(Response::empty(204))
        })())
    }

    fn room_members(&self, app: &str, room: &str) -> Vec<Value> {
        self.core
            .members_of(app, Some(room))
            .iter()
            .map(|m| {
                json!({"session": m.session, "role": m.role.name(),
                    "kind": if m.publishes { "whip" } else { "whep" }})
            })
            .collect()
    }

    fn list_rooms(&self) -> Response {
        let a = self.core.apps();
        let mut v = Vec::new();
        for (app_id, app) in &a.reg.apps {
            for (name, r) in &app.rooms {
                v.push(
                    json!({"app": app_id, "room": name, "created_unix": r.created_unix,
                    "policy": app.policy_for(name).public_json()}),
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
        let a = self.core.apps();
        let Some(r) = a.reg.room(app, room) else {
            return Response::error(404, format!("room `{app}/{room}` not found"));
        };
        let created = r.created_unix;
        let policy = a.reg.policy(app, room).cloned().unwrap_or_default();
        drop(a);
        Response::json(
            200,
            &json!({"app": app, "room": room, "created_unix": created, "policy": policy.public_json(),
                "members": self.room_members(app, room)}),
        )
    }

    /// `PUT` (or `POST`) `/v1/rooms/{app}/{room}` `{"policy": {...}|null}`: create the room, set its policy.
    fn put_room(&self, app: &str, room: &str, req: &Request) -> Response {
        answer((|| {
            let b = Body::parse_or_empty(&req.body, &["policy"])?;
            let policy = valid_policy(b.opt_serde::<RoomPolicy>("policy")?)?;
            let mut a = self.core.apps();
            a.reg
                .set_room_policy(app, room, policy, clock::unix_ms() / 1000)
                .map_err(|e| CoreError::NotFound(e.to_string()))?;
            a.save()?;
            let p = a.reg.policy(app, room).cloned().unwrap_or_default();
            Ok(Response::json(
                200,
                &json!({"app": app, "room": room, "policy": p.public_json()}),
            ))
        })())
    }

    /// Remove the room, then its participants.
    fn delete_room(&self, app: &str, room: &str) -> Response {
        answer((|| {
            self.remove_from_registry(|reg| reg.remove_room(app, room))?;
            self.core.remove_members_of(app, Some(room));
            Ok(Response::empty(204))
        })())
    }

    /// `POST /v1/tokens` `{"app","room","role","ttl_secs"?,"email"?,"sub"?}`.
    fn mint_api(&self, req: &Request) -> Response {
        answer((|| {
            let b = Body::parse(
                &req.body,
                &["app", "room", "role", "ttl_secs", "email", "sub"],
            )?;
            let app = b.req_str("app")?;
            let room = b.req_str("room")?;
            let role_s = b.req_str("role")?;
            let role = token_role(role_s)
                .ok_or_else(|| CoreError::invalid("role", format!("unknown role `{role_s}`")))?;
            let ttl = match b.get("ttl_secs") {
                None => DEFAULT_TOKEN_TTL,
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| CoreError::invalid("ttl_secs", "not an integer"))?,
            };
            let email = b.opt_str("email")?.map(str::to_string);
            let sub = match b.opt_str("sub")? {
                Some(s) => s.to_string(),
                None => format!("user-{}", random_hex(6)?),
            };
            self.mint(app, room, role, ttl, email, &sub)
        })())
    }

    /// A signed token for `app`/`room` under the application's newest developer key.
    pub(super) fn mint(
        &self,
        app: &str,
        room: &str,
        role: Role,
        ttl: u64,
        email: Option<String>,
        sub: &str,
    ) -> Result<Response, CoreError> {
        if !valid_segment(room) {
            return Err(CoreError::invalid("room", "1..=64 of A-Z a-z 0-9 - _ ."));
        }
        let max = self.token_limits().max_lifetime_secs;
        if ttl == 0 || ttl > max {
            return Err(CoreError::invalid(
                "ttl_secs",
                format!("out of range 1..={max} (control.token_max_lifetime_secs)"),
            ));
        }
        let key = self.newest_key(app)?;
        let now = clock::unix_ms() / 1000;
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

    fn newest_key(&self, app: &str) -> Result<DevKey, CoreError> {
        let a = self.core.apps();
        let Some(entry) = a.reg.app(app) else {
            return Err(CoreError::NotFound(format!(
                "application `{app}` not found"
            )));
        };
        let newest = entry
            .keys
            .iter()
            .max_by_key(|k| k.created_unix)
            .map(|k| k.kid.clone());
        newest
            .and_then(|kid| a.key(app, Some(&kid)))
            .ok_or_else(|| CoreError::Conflict(format!("application `{app}` has no developer key")))
    }
}

/// A developer key from its base64url secret; the decoded copy is wiped.
fn dev_key_from_base64(kid: &str, s: &str) -> Result<DevKey, CoreError> {
    let mut raw = URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| CoreError::invalid("secret", "not base64url"))?;
    let k = DevKey::new(kid, &raw);
    // The key material is in `k` now; do not leave a copy in freed memory.
    raw.fill(0);
    std::hint::black_box(&raw);
    k.map_err(|e| CoreError::invalid("secret", e))
}

/// A room policy from a request, refused (400, naming the field) when a value is out of bounds.
fn valid_policy(p: Option<RoomPolicy>) -> Result<Option<RoomPolicy>, CoreError> {
    if let Some(p) = &p {
        p.validate().map_err(|(field, msg)| CoreError::Invalid {
            field: format!("policy.{field}"),
            msg,
        })?;
    }
    Ok(p)
}
