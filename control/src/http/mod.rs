//! The HTTP layer: the listeners on tokio and hyper ([`server`], with per-address limits in
//! [`limits`], HTTPS in [`tls`] and counters in [`stats`]) and what they serve — the
//! admin REST API ([`admin`], [`apps_api`]), WHIP/WHEP with CORS and the demo page
//! ([`whip`]), the node-to-node trunk endpoints ([`trunks`]), and the Prometheus text and
//! `/v1/stats` rendering ([`metrics`]).
//!
//! Owns: request routing, parsing and validation of bodies ([`body`]), bearer-token
//! authentication, and mapping the core's [`CoreError`] to answers. May not touch: shm and
//! the journal (every change goes through [`crate::core`]).

pub mod admin;
pub mod apps_api;
pub mod body;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod process;
pub mod server;
pub mod stats;
pub mod tls;
pub mod trunks;
pub mod whip;

pub use server::{
    Handler, Limits, Listener, Options, Request, Response, Runtime, Server, MAX_BODY, MAX_HEAD,
};

use crate::api::Control;
use crate::core::{Core, CoreError};
use serde_json::{json, Value};

/// The answer for a refused core operation: its status and `{"error"}` (with `"reason"`
/// where the core names one).
pub fn error_response(e: &CoreError) -> Response {
    match e.reason() {
        Some(reason) => Response::json(
            e.status(),
            &json!({"error": e.to_string(), "reason": reason}),
        ),
        None => Response::error(e.status(), e.to_string()),
    }
}

/// Record an answered request in the audit log: its status, and "ok" or its error message.
pub fn audit_response(core: &Core, actor: &str, action: &str, ids: Value, resp: &Response) {
    let result = if resp.status < 300 {
        "ok".to_string()
    } else {
        serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("status {}", resp.status))
    };
    core.audit.record(actor, action, ids, resp.status, &result);
}

/// The admin listener's handler.
pub struct AdminHandler(pub std::sync::Arc<Control>);
impl Handler for AdminHandler {
    fn handle(&self, req: &Request) -> Response {
        self.0.handle_admin(req)
    }
}

/// The public listener's handler.
pub struct PublicHandler(pub std::sync::Arc<Control>);
impl Handler for PublicHandler {
    fn handle(&self, req: &Request) -> Response {
        self.0.handle_public(req)
    }
}
