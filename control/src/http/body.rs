//! Request bodies and path parameters of the admin API: a JSON object with field-naming
//! accessors, and the parsers of ids, peer addresses, keys and rewrite rules. Every parser
//! returns a typed error ([`CoreError::Invalid`] names the field).

use crate::core::CoreError;
use crate::state::RewriteSpec;
use contract::shm::MAX_MAPPINGS;
use contract::srtp::{MasterKey, Profile};
use serde_json::{Map, Value};
use std::net::SocketAddr;

fn bad_field(field: &str, msg: impl std::fmt::Display) -> CoreError {
    CoreError::invalid(field, msg)
}

/// A positive id from a path segment; anything else is "not found".
pub fn parse_id(s: &str, what: &str) -> Result<u64, CoreError> {
    s.parse::<u64>().ok().filter(|&i| i != 0).ok_or_else(|| {
        CoreError::NotFound(format!("{what} {s} not found (ids are positive integers)"))
    })
}

/// Error messages never echo the address: they are copied into the audit log (no peer IPs).
pub fn parse_peer(s: &str) -> Result<SocketAddr, CoreError> {
    let a: SocketAddr = s.parse().map_err(|_| {
        bad_field(
            "peer",
            format!("`{s}` is not IP:PORT (IPv6 as [addr]:port)"),
        )
    })?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(bad_field(
            "peer",
            format!("`{s}` is not a unicast address with a port"),
        ));
    }
    Ok(a)
}

pub fn parse_key(profile: Profile, b: &Body, field: &str) -> Result<MasterKey, CoreError> {
    let s = b.req_str(field)?;
    MasterKey::from_base64(profile, s).map_err(|e| bad_field(field, e))
}

pub fn parse_rewrite(v: &Value) -> Result<RewriteSpec, CoreError> {
    let Value::Object(o) = v else {
        return Err(bad_field("rewrite", "must be an object"));
    };
    for k in o.keys() {
        if !["ssrc", "pt_map", "ext_map"].contains(&k.as_str()) {
            return Err(bad_field(&format!("rewrite.{k}"), "unknown field"));
        }
    }
    let ssrc = match o.get("ssrc") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            as_u32(v)
                .ok_or_else(|| bad_field("rewrite.ssrc", "must be an integer 0..=4294967295"))?,
        ),
    };
    // RFC 3550 §5.1: payload types are 7 bits. RFC 8285 §4.2/§4.3: extension ids 1..=14
    // (one-byte form) or 1..=255 (two-byte form).
    let pt_map = parse_map(o.get("pt_map"), "rewrite.pt_map", 0, 127)?;
    let ext_map = parse_map(o.get("ext_map"), "rewrite.ext_map", 1, 255)?;
    Ok(RewriteSpec {
        ssrc,
        pt_map,
        ext_map,
    })
}

fn parse_map(v: Option<&Value>, field: &str, lo: u64, hi: u64) -> Result<Vec<[u8; 2]>, CoreError> {
    let arr = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad_field(field, "must be an array of [from, to] pairs")),
    };
    if arr.len() > MAX_MAPPINGS {
        return Err(bad_field(field, format!("at most {MAX_MAPPINGS} mappings")));
    }
    let mut out: Vec<[u8; 2]> = Vec::new();
    for pair in arr {
        let p = pair
            .as_array()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| bad_field(field, "each entry must be a [from, to] pair"))?;
        let mut two = [0u8; 2];
        for (i, x) in p.iter().enumerate() {
            let n = x
                .as_u64()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad_field(field, format!("values must be integers {lo}..={hi}")))?;
            two[i] = n as u8;
        }
        if out.iter().any(|q| q[0] == two[0]) {
            return Err(bad_field(field, format!("{} is mapped twice", two[0])));
        }
        out.push(two);
    }
    Ok(out)
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A JSON object request body with field-naming accessors.
pub struct Body(pub Map<String, Value>);

impl Body {
    pub fn parse(bytes: &[u8], allowed: &[&str]) -> Result<Body, CoreError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CoreError::BadRequest(format!("body is not valid JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(CoreError::BadRequest("body must be a JSON object".into()));
        };
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad_field(
                k,
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
        Ok(Body(m))
    }

    /// [`Body::parse`], with an empty body read as `{}`.
    pub fn parse_or_empty(bytes: &[u8], allowed: &[&str]) -> Result<Body, CoreError> {
        Body::parse(if bytes.is_empty() { b"{}" } else { bytes }, allowed)
    }

    pub fn has(&self, k: &str) -> bool {
        !matches!(self.0.get(k), None | Some(Value::Null))
    }

    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub fn req_str(&self, k: &str) -> Result<&str, CoreError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Err(bad_field(k, "is required")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(bad_field(k, "must be a string")),
        }
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<&str>, CoreError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad_field(k, "must be a string")),
        }
    }

    pub fn opt_u32(&self, k: &str) -> Result<Option<u32>, CoreError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => as_u32(v)
                .map(Some)
                .ok_or_else(|| bad_field(k, "must be an integer 0..=4294967295")),
        }
    }

    pub fn req_u64(&self, k: &str) -> Result<u64, CoreError> {
        match self.0.get(k) {
            None | Some(Value::Null) => Err(bad_field(k, "is required")),
            Some(v) => v
                .as_u64()
                .filter(|&n| n != 0)
                .ok_or_else(|| bad_field(k, "must be a session id (positive integer)")),
        }
    }

    /// An optional field parsed with serde; a bad value is an error naming the field.
    pub fn opt_serde<T: serde::de::DeserializeOwned>(
        &self,
        k: &str,
    ) -> Result<Option<T>, CoreError> {
        self.get(k)
            .map(|v| serde_json::from_value::<T>(v.clone()).map_err(|e| bad_field(k, e)))
            .transpose()
    }
}
