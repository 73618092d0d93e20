//! The node-to-node trunk endpoints (`/cluster/v1/trunks…`, docs/CLUSTER.md "Cascade"):
//! signature check, request parsing and the answers; what they do is the cluster's
//! ([`crate::cluster::trunk`]).

use super::{error_response, Request, Response};
use crate::cluster::auth::{AuthError, AUTH_HEADER};
use crate::cluster::trunk::{OpenRequest, TrunkRefusal, TRUNKS_PATH};
use crate::cluster::Cluster;
use crate::core::Core;
use serde_json::{json, Value};

fn refusal(status: u16, reason: &str, message: &str) -> Response {
    Response::json(status, &json!({"error": message, "reason": reason}))
}

fn refused(r: &TrunkRefusal) -> Response {
    match r {
        TrunkRefusal::Refused {
            status,
            reason,
            message,
        } => refusal(*status, reason, message),
        TrunkRefusal::Core(e) => error_response(e),
    }
}

/// Serve `/cluster/v1/trunks…` (node-to-node, signed); `None` for another path.
pub fn handle_trunks(cluster: &Cluster, core: &Core, req: &Request) -> Option<Response> {
    let rest = req.path.strip_prefix(TRUNKS_PATH)?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let now = crate::clock::unix_ms();
    let path = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let sig = match cluster.verify_node(&req.method, &path, &req.body, req.header(AUTH_HEADER), now)
    {
        Ok(s) => s,
        Err(e) => {
            let status = if matches!(e, AuthError::NoSecret) {
                404
            } else {
                401
            };
            // Counted, and audited through the rate limit of refused requests: a flood of
            // bad requests cannot flood the audit log.
            core.record_denial(
                crate::core::denials::Denial {
                    action: "cluster.denied",
                    target: [("method", &req.method), ("path", &req.path)],
                    reason: e.denial_reason(),
                    from: core.audit.hasher.hash_client(&req.peer),
                    status,
                    message: e.to_string(),
                },
                now,
            );
            return Some(refusal(status, e.reason(), &e.to_string()));
        }
    };
    Some(match (req.method.as_str(), segs.as_slice()) {
        ("POST", []) => {
            let o: OpenRequest = match serde_json::from_slice(&req.body) {
                Ok(o) => o,
                Err(e) => return Some(refusal(400, "bad_request", &format!("trunk request: {e}"))),
            };
            match cluster.open_origin(core, &o, &sig, now) {
                Ok(grant) => {
                    Response::json(201, &serde_json::to_value(&grant).unwrap_or(Value::Null))
                }
                Err(r) => refused(&r),
            }
        }
        ("GET", [edge, "rooms", app, room]) => {
            match cluster.origin_streams(core, &sig, edge, app, room) {
                Ok(answer) => {
                    Response::json(200, &serde_json::to_value(&answer).unwrap_or(Value::Null))
                }
                Err(r) => refused(&r),
            }
        }
        ("DELETE", [edge, "rooms", app, room]) => {
            match cluster.origin_close_room(core, &sig, edge, app, room) {
                Ok(()) => Response::empty(204),
                Err(r) => refused(&r),
            }
        }
        _ => refusal(404, "no_such_endpoint", "no such cluster endpoint"),
    })
}
