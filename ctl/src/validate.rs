//! Local checks of command-line values, so mistakes are reported before any request.
//!
//! Owns: parsing profiles, keys, addresses, roles and payload-type maps into typed values
//! with messages that name the flag. May not touch: the network.

use std::net::SocketAddr;

use contract::shm::{Role, MAX_LAYERS, MAX_MAPPINGS};
use contract::srtp::{KeyParseError, MasterKey, Profile};

use crate::error::{CtlError, Result};

/// Parse an SRTP profile name (case-insensitive; `SRTP_` prefix accepted).
pub fn profile(s: &str) -> Result<Profile> {
    Profile::from_name(s).map_err(|_| {
        let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
        CtlError::usage(format!(
            "unknown SRTP profile {s:?}; expected one of: {}",
            names.join(", ")
        ))
    })
}

/// Parse a base64 master key ‖ salt for `profile`; `flag` names the option in the message.
pub fn key(flag: &str, profile: Profile, b64: &str) -> Result<MasterKey> {
    MasterKey::from_base64(profile, b64).map_err(|e| match e {
        KeyParseError::Base64 => CtlError::usage(format!("{flag}: key is not valid base64")),
        KeyParseError::Length { expected, got } => CtlError::usage(format!(
            "{flag}: key has {got} bytes but {profile} needs {expected} (master key {} + master salt {})",
            profile.key_len(),
            profile.salt_len()
        )),
    })
}

/// Check a key whose profile is not known locally (rekey): valid base64 whose length fits
/// at least one profile. Returns the key in canonical padded base64.
pub fn key_any_profile(flag: &str, b64: &str) -> Result<String> {
    let mut last = None;
    for p in Profile::ALL {
        match MasterKey::from_base64(p, b64) {
            Ok(k) => return Ok(k.to_base64()),
            Err(KeyParseError::Base64) => {
                return Err(CtlError::usage(format!("{flag}: key is not valid base64")))
            }
            Err(KeyParseError::Length { got, .. }) => last = Some(got),
        }
    }
    let mut lens: Vec<usize> = Profile::ALL.iter().map(|p| p.key_material_len()).collect();
    lens.sort_unstable();
    lens.dedup();
    let lens: Vec<String> = lens.iter().map(usize::to_string).collect();
    Err(CtlError::usage(format!(
        "{flag}: key has {} bytes, which fits no SRTP profile (expected {} bytes of key ‖ salt)",
        last.unwrap_or(0),
        lens.join(", ")
    )))
}

/// Parse `IP:PORT` (IPv6 as `[ADDR]:PORT`); port 0 is refused.
pub fn peer(s: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        CtlError::usage(format!(
            "--peer: {s:?} is not IP:PORT (IPv6 as [ADDR]:PORT, no host names)"
        ))
    })?;
    if addr.port() == 0 {
        return Err(CtlError::usage(format!("--peer: {s:?} has port 0")));
    }
    Ok(addr)
}

/// Parse a role name.
pub fn role(s: &str) -> Result<Role> {
    Role::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
        CtlError::usage(format!(
            "--role: unknown role {s:?}; expected one of: {}",
            names.join(", ")
        ))
    })
}

/// `route add --layers A,B,C`: one route body per layer (`base` is the body without an SSRC
/// filter; it already rewrites the SSRC), each with its layer's SSRC filter and place.
pub fn layer_routes(
    base: &serde_json::Value,
    layers: &[u32],
    max_layer: Option<u8>,
) -> Result<Vec<serde_json::Value>> {
    let count = layers.len();
    if count == 0 || count > usize::from(MAX_LAYERS) {
        return Err(CtlError::usage(format!(
            "--layers: 1 to {MAX_LAYERS} SSRCs, lowest resolution first; got {count}"
        )));
    }
    if let Some(i) = (1..count).find(|&i| layers[..i].contains(&layers[i])) {
        return Err(CtlError::usage(format!(
            "--layers: SSRC {} is given twice",
            layers[i]
        )));
    }
    if let Some(m) = max_layer.filter(|m| usize::from(*m) >= count) {
        return Err(CtlError::usage(format!(
            "--max-layer: {m} is not one of the {count} layers (0 = the lowest)"
        )));
    }
    Ok(layers
        .iter()
        .enumerate()
        .map(|(i, ssrc)| {
            let mut b = base.clone();
            b["ssrc"] = serde_json::json!(ssrc);
            let mut layer = serde_json::json!({ "index": i, "count": count });
            if let Some(m) = max_layer {
                layer["max"] = serde_json::json!(m);
            }
            b["rewrite"]["layer"] = layer;
            b
        })
        .collect())
}

/// Parse repeated `--pt FROM:TO` into payload-type pairs (RTP payload types are 7 bits).
pub fn pt_map(items: &[String]) -> Result<Vec<(u8, u8)>> {
    if items.len() > MAX_MAPPINGS {
        return Err(CtlError::usage(format!(
            "--pt: at most {MAX_MAPPINGS} payload-type mappings per route, got {}",
            items.len()
        )));
    }
    let mut out: Vec<(u8, u8)> = Vec::with_capacity(items.len());
    for item in items {
        let bad = || {
            CtlError::usage(format!(
                "--pt: {item:?} is not FROM:TO with payload types 0-127"
            ))
        };
        let (a, b) = item.split_once(':').ok_or_else(bad)?;
        let a: u8 = a.trim().parse().map_err(|_| bad())?;
        let b: u8 = b.trim().parse().map_err(|_| bad())?;
        if a > 127 || b > 127 {
            return Err(bad());
        }
        if out.iter().any(|(f, _)| *f == a) {
            return Err(CtlError::usage(format!(
                "--pt: payload type {a} is mapped twice"
            )));
        }
        out.push((a, b));
    }
    Ok(out)
}

/// Parse hex (whitespace and an optional `0x` prefix allowed).
pub fn hex(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.is_empty() {
        return Err(CtlError::usage("packet: empty hex input"));
    }
    if digits.len() % 2 != 0 {
        return Err(CtlError::usage(format!(
            "packet: odd number of hex digits ({})",
            digits.len()
        )));
    }
    let val = |c: u8| -> Option<u8> { (c as char).to_digit(16).map(|d| d as u8) };
    digits
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (val(pair[0]), val(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(CtlError::usage(format!(
                "packet: invalid hex digit near byte {i}: {:?}",
                String::from_utf8_lossy(pair)
            ))),
        })
        .collect()
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_routes_one_body_per_layer() {
        let base = serde_json::json!({"from": 1, "to": 2, "rewrite": {"ssrc": 99}});
        let b = layer_routes(&base, &[10, 20, 30], Some(1)).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[2]["ssrc"], 30);
        assert_eq!(b[2]["rewrite"]["ssrc"], 99);
        assert_eq!(
            b[2]["rewrite"]["layer"],
            serde_json::json!({"index": 2, "count": 3, "max": 1})
        );
        assert!(b[0]["rewrite"]["layer"].get("max").is_some());
        let b = layer_routes(&base, &[10, 20], None).unwrap();
        assert_eq!(
            b[1]["rewrite"]["layer"],
            serde_json::json!({"index": 1, "count": 2})
        );
        assert!(layer_routes(&base, &[1, 2, 3, 4], None).is_err());
        assert!(layer_routes(&base, &[1, 1], None).is_err());
        assert!(layer_routes(&base, &[1, 2], Some(2)).is_err());
    }

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(hex("0x80 0f\nAB").unwrap(), vec![0x80, 0x0f, 0xab]);
        assert_eq!(to_hex(&[0x80, 0x0f, 0xab]), "800fab");
        assert!(hex("").is_err());
        assert!(hex("abc").is_err());
        assert!(hex("zz").is_err());
        assert!(hex("é0").is_err());
    }

    #[test]
    fn pt_maps() {
        assert_eq!(
            pt_map(&["96:100".into(), "0:8".into()]).unwrap(),
            vec![(96, 100), (0, 8)]
        );
        for bad in ["96", "96:128", "a:1", "96:1:2", ""] {
            assert!(pt_map(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(pt_map(&["1:2".into(), "1:3".into()]).is_err());
    }

    #[test]
    fn peers_and_keys() {
        assert!(peer("127.0.0.1:5000").is_ok());
        assert!(peer("[::1]:5000").is_ok());
        for bad in ["127.0.0.1", "localhost:5000", "1.2.3.4:0", "::1:5"] {
            assert!(peer(bad).is_err(), "{bad}");
        }
        let k = MasterKey::new(Profile::AeadAes128Gcm, &[1; 28])
            .unwrap()
            .to_base64();
        assert!(key_any_profile("--tx-key", &k).is_ok());
        let e = key_any_profile("--tx-key", "AAAA").unwrap_err().to_string();
        assert!(e.contains("3 bytes"), "{e}");
        assert!(profile("srtp_aead_aes_256_gcm").is_ok());
        assert!(role("Viewer").is_ok() && role("admin").is_err());
    }
}
