//! Request bodies and path parameters of the admin API: a JSON object with field-naming
//! accessors, and the parsers of ids, peer addresses, keys and rewrite rules. Every parser
//! returns a typed error ([`CoreError::Invalid`] names the field).

use crate::core::CoreError;
use crate::state::{KeyframeKind, LayerSpec, MidSpec, RewriteSpec, RtxSpec};
use contract::shm::{MAX_LAYERS, MAX_MAPPINGS};
use contract::srtp::{MasterKey, Profile};
use serde_json::{Map, Value};
use std::net::SocketAddr;

fn bad_field(field: &str, msg: impl std::fmt::Display) -> CoreError {
    CoreError::invalid(field, msg)
}

/// A positive id from a path segment; anything else is "not found".
pub fn parse_id(s: &str, what: &str) -> Result<u64, CoreError> {
    s.parse::<u64>().ok().filter(|&i| i != 0).ok_or_else(|| {
        bad_field(
            "id",
            format!("`{}` is not a {what} id (a positive integer)", shown(s)),
        )
    })
}

/// A client's input as an error message may quote it ([`crate::audit::quoted`]).
pub fn shown(s: &str) -> String {
    crate::audit::quoted(s)
}

/// Error messages never echo the address: they are copied into the audit log (no peer IPs).
pub fn parse_peer(s: &str) -> Result<SocketAddr, CoreError> {
    let a: SocketAddr = s.parse().map_err(|_| {
        bad_field(
            "peer",
            format!("`{}` is not IP:PORT (IPv6 as [addr]:port)", shown(s)),
        )
    })?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(bad_field(
            "peer",
            format!("`{}` is not a unicast address with a port", shown(s)),
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
        if ![
            "ssrc",
            "pt_map",
            "ext_map",
            "mid",
            "rtx",
            "source_rtx",
            "twcc_id",
            "keyframe",
            "layer",
            "dd_id",
        ]
        .contains(&k.as_str())
        {
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
    let mid = match o.get("mid") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_mid(v)?),
    };
    let rtx = match o.get("rtx") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_rtx(v, "rewrite.rtx")?),
    };
    let source_rtx = match o.get("source_rtx") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_rtx(v, "rewrite.source_rtx")?),
    };
    // draft-holmer-rmcat-transport-wide-cc-extensions-01 §2: an RFC 8285 extension id.
    let twcc_id = match o.get("twcc_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|id| (1..=255).contains(id))
                .ok_or_else(|| bad_field("rewrite.twcc_id", "must be an extension id 1..=255"))?
                as u8,
        ),
    };
    let keyframe = parse_keyframe(o.get("keyframe"))?;
    let layer = match o.get("layer") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_layer(v)?),
    };
    // The Dependency Descriptor (AV1 RTP specification, appendix A): an SVC route, whose
    // one-layer `layer` caps the spatial and temporal layer (docs/ENGINE.md "SVC").
    let dd_id = match o.get("dd_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|id| (1..=255).contains(id))
                .ok_or_else(|| bad_field("rewrite.dd_id", "must be an extension id 1..=255"))?
                as u8,
        ),
    };
    if dd_id.is_some() && layer.is_none_or(|l| l.count != 1) {
        return Err(bad_field(
            "rewrite.dd_id",
            "needs a layer of count 1 (an SVC route)",
        ));
    }
    Ok(RewriteSpec {
        ssrc,
        pt_map,
        ext_map,
        mid,
        rtx,
        source_rtx,
        twcc_id,
        keyframe,
        layer,
        dd_id,
    })
}

/// `["pli", "fir"]`: the keyframe requests the publisher understands (each at most once).
fn parse_keyframe(v: Option<&Value>) -> Result<Vec<KeyframeKind>, CoreError> {
    let arr = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= 2 => a,
        Some(_) => {
            return Err(bad_field(
                "rewrite.keyframe",
                "must be a list of \"pli\" and \"fir\"",
            ))
        }
    };
    let mut out = Vec::new();
    for k in arr {
        let kind = match k.as_str() {
            Some("pli") => KeyframeKind::Pli,
            Some("fir") => KeyframeKind::Fir,
            _ => {
                return Err(bad_field(
                    "rewrite.keyframe",
                    "must be a list of \"pli\" and \"fir\"",
                ))
            }
        };
        if out.contains(&kind) {
            return Err(bad_field("rewrite.keyframe", "names a kind twice"));
        }
        out.push(kind);
    }
    Ok(out)
}

/// `rewrite.layer`: `{"index": 0..count, "count": 1..=3, "max": 0..=2 | null}`.
fn parse_layer(v: &Value) -> Result<LayerSpec, CoreError> {
    let Value::Object(o) = v else {
        return Err(bad_field("rewrite.layer", "must be an object"));
    };
    for k in o.keys() {
        if !["index", "count", "max", "max_temporal"].contains(&k.as_str()) {
            return Err(bad_field(
                &format!("rewrite.layer.{}", shown(k)),
                "unknown field",
            ));
        }
    }
    let max_layers = u64::from(MAX_LAYERS);
    let count = o
        .get("count")
        .and_then(Value::as_u64)
        .filter(|n| (1..=max_layers).contains(n))
        .ok_or_else(|| bad_field("rewrite.layer.count", "must be an integer 1..=3"))?;
    let index = o
        .get("index")
        .and_then(Value::as_u64)
        .filter(|n| *n < count)
        .ok_or_else(|| bad_field("rewrite.layer.index", "must be an integer below `count`"))?;
    let max = match o.get("max") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_max_layer(v, "rewrite.layer.max")?),
    };
    let max_temporal = match o.get("max_temporal") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_max_temporal(v, "rewrite.layer.max_temporal")?),
    };
    Ok(LayerSpec {
        index: index as u8,
        count: count as u8,
        max,
        max_temporal,
    })
}

/// A subscriber's highest VP8 temporal layer: 0..=3 (the TID, RFC 7741 §4.2).
pub fn parse_max_temporal(v: &Value, field: &str) -> Result<u8, CoreError> {
    v.as_u64()
        .filter(|n| *n <= u64::from(contract::shm::Layer::MAX_TEMPORAL))
        .map(|n| n as u8)
        .ok_or_else(|| bad_field(field, "must be a temporal layer 0..=3 or null"))
}

/// A subscriber's highest simulcast layer: 0..=2 (0 = the lowest resolution).
pub fn parse_max_layer(v: &Value, field: &str) -> Result<u8, CoreError> {
    v.as_u64()
        .filter(|n| *n < u64::from(MAX_LAYERS))
        .map(|n| n as u8)
        .ok_or_else(|| bad_field(field, "must be a layer 0..=2 or null"))
}

/// `{"id": 1..=255, "value": "<1–16 token characters>"}`.
fn parse_mid(v: &Value) -> Result<MidSpec, CoreError> {
    let Value::Object(o) = v else {
        return Err(bad_field(
            "rewrite.mid",
            "must be an object {\"id\", \"value\"}",
        ));
    };
    for k in o.keys() {
        if !["id", "value"].contains(&k.as_str()) {
            return Err(bad_field(
                &format!("rewrite.mid.{}", shown(k)),
                "unknown field",
            ));
        }
    }
    let id = o
        .get("id")
        .and_then(Value::as_u64)
        .filter(|id| (1..=255).contains(id))
        .ok_or_else(|| bad_field("rewrite.mid.id", "must be an extension id 1..=255"))?;
    let value = o
        .get("value")
        .and_then(Value::as_str)
        .filter(|s| MidSpec::valid_value(s))
        .ok_or_else(|| bad_field("rewrite.mid.value", "must be 1 to 16 token characters"))?;
    Ok(MidSpec {
        id: id as u8,
        value: value.to_owned(),
    })
}

/// `rewrite.rtx` or `rewrite.source_rtx` (`field`): `{"payload_type": 0..=127, "ssrc": u32}`
/// (an RFC 4588 RTX stream).
fn parse_rtx(v: &Value, field: &str) -> Result<RtxSpec, CoreError> {
    let Value::Object(o) = v else {
        return Err(bad_field(field, "must be an object"));
    };
    for k in o.keys() {
        if !["payload_type", "ssrc"].contains(&k.as_str()) {
            return Err(bad_field(&format!("{field}.{}", shown(k)), "unknown field"));
        }
    }
    let payload_type = o
        .get("payload_type")
        .and_then(Value::as_u64)
        .filter(|n| *n <= 127)
        .ok_or_else(|| {
            bad_field(
                &format!("{field}.payload_type"),
                "must be an integer 0..=127",
            )
        })? as u8;
    let ssrc = o.get("ssrc").and_then(as_u32).ok_or_else(|| {
        bad_field(
            &format!("{field}.ssrc"),
            "must be an integer 0..=4294967295",
        )
    })?;
    Ok(RtxSpec { payload_type, ssrc })
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
        let v: Value = strict::from_slice(bytes)
            .map_err(|e| CoreError::BadRequest(format!("body is not valid JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(CoreError::BadRequest("body must be a JSON object".into()));
        };
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad_field(
                &shown(k),
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

/// JSON parsing that refuses an object with the same key twice, at any depth. `serde_json`
/// keeps the last one silently, so `{"role":"viewer","role":"host"}` would read as host while a
/// proxy or log that keeps the first saw a viewer.
mod strict {
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};
    use std::fmt;

    pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_slice(bytes);
        let v = Strict.deserialize(&mut d)?;
        d.end()?;
        Ok(v)
    }

    struct Strict;

    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Strict {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
            Ok(Value::Bool(b))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
            Ok(n.into())
        }
        fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
            Ok(n.into())
        }
        fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, s: &str) -> Result<Value, E> {
            Ok(Value::String(s.to_owned()))
        }
        fn visit_string<E>(self, s: String) -> Result<Value, E> {
            Ok(Value::String(s))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut v = Vec::new();
            while let Some(x) = a.next_element_seed(Strict)? {
                v.push(x);
            }
            Ok(Value::Array(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = a.next_key::<String>()? {
                let v = a.next_value_seed(Strict)?;
                if m.contains_key(&k) {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key `{}`",
                        super::shown(&k)
                    )));
                }
                m.insert(k, v);
            }
            Ok(Value::Object(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(Body::parse(
            br#"{"role":"viewer","peer":"1.2.3.4:5"}"#,
            &["role", "peer"]
        )
        .is_ok());
        for dup in [
            r#"{"role":"viewer","role":"host"}"#,
            r#"{"rewrite":{"ssrc":1,"ssrc":2}}"#,
            r#"{"rewrite":{"pt_map":[[96,100]],"x":[{"a":1,"a":2}]}}"#,
        ] {
            match Body::parse(dup.as_bytes(), &["role", "rewrite"]) {
                Err(CoreError::BadRequest(m)) => assert!(m.contains("duplicate key"), "{m}"),
                other => panic!("{dup}: {:?}", other.map(|b| b.0)),
            }
        }
    }

    #[test]
    fn rewrite_keyframe_is_parsed_and_checked() {
        let v: Value = serde_json::from_str(r#"{"keyframe":["fir","pli"]}"#).unwrap();
        let rw = parse_rewrite(&v).unwrap();
        assert_eq!(rw.keyframe, [KeyframeKind::Fir, KeyframeKind::Pli]);
        use contract::shm::keyframe::{FIR, PLI};
        assert_eq!(rw.to_rewrite().keyframe, PLI | FIR);
        for bad in [
            r#"{"keyframe":["pli","pli"]}"#,
            r#"{"keyframe":["nack"]}"#,
            r#"{"keyframe":"pli"}"#,
            r#"{"keyframe":["pli","fir","pli"]}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert_eq!(parse_rewrite(&v).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn rewrite_mid_is_parsed_and_checked() {
        let v: Value = serde_json::from_str(r#"{"mid":{"id":9,"value":"video-0"}}"#).unwrap();
        let rw = parse_rewrite(&v).unwrap();
        let m = rw.mid.as_ref().unwrap();
        assert_eq!((m.id, m.value.as_str()), (9, "video-0"));
        let shm = rw.to_rewrite();
        assert_eq!(shm.mid(), Some((9, &b"video-0"[..])));
        for bad in [
            r#"{"mid":{"id":0,"value":"0"}}"#,
            r#"{"mid":{"id":3,"value":""}}"#,
            r#"{"mid":{"id":3,"value":"seventeen-chars!!"}}"#,
            r#"{"mid":{"id":3,"value":"a b"}}"#,
            r#"{"mid":{"id":3,"value":"0","x":1}}"#,
            r#"{"mid":"0"}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            let e = parse_rewrite(&v).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
    }

    #[test]
    fn rewrite_source_rtx_and_twcc_id_are_parsed_and_checked() {
        let v: Value = serde_json::from_str(
            r#"{"rtx":{"payload_type":97,"ssrc":7},"source_rtx":{"payload_type":101,"ssrc":2222},"twcc_id":3}"#,
        )
        .unwrap();
        let rw = parse_rewrite(&v).unwrap();
        assert_eq!(
            rw.source_rtx,
            Some(RtxSpec {
                payload_type: 101,
                ssrc: 2222
            })
        );
        assert_eq!(rw.twcc_id, Some(3));
        let shm = rw.to_rewrite();
        assert_eq!(shm.twcc_id, 3);
        assert_eq!(
            shm.source_rtx.map(|x| (x.payload_type, x.ssrc)),
            Some((101, 2222))
        );
        for (bad, field) in [
            (
                r#"{"source_rtx":{"payload_type":128,"ssrc":1}}"#,
                "rewrite.source_rtx.payload_type",
            ),
            (
                r#"{"source_rtx":{"payload_type":96}}"#,
                "rewrite.source_rtx.ssrc",
            ),
            (
                r#"{"source_rtx":{"payload_type":96,"ssrc":1,"apt":96}}"#,
                "rewrite.source_rtx.apt",
            ),
            (r#"{"source_rtx":5}"#, "rewrite.source_rtx"),
            (r#"{"twcc_id":0}"#, "rewrite.twcc_id"),
            (r#"{"twcc_id":256}"#, "rewrite.twcc_id"),
            (r#"{"twcc_id":"3"}"#, "rewrite.twcc_id"),
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            match parse_rewrite(&v) {
                Err(CoreError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_ids_are_400_and_input_is_quoted_short() {
        assert_eq!(parse_id("7", "session"), Ok(7));
        let e = parse_id("abc", "session").unwrap_err();
        assert_eq!(e.status(), 400);
        let long = "x".repeat(5000);
        let e = parse_id(&long, "session").unwrap_err().to_string();
        assert!(e.len() < 200, "{} bytes", e.len());
        let e = parse_peer(&format!("{long}\nforged audit line"))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && !e.contains('\n'), "{e}");
        assert_eq!(shown("a\u{1b}b"), "a?b");
    }
}
