//! Encoding of [`SessionRecord`] and [`RouteRecord`] into slot payload words, and the
//! validating decoders. Words are `u64`; multi-byte fields inside a word are little-endian
//! (low bits first). Payload word `i` here is slot word `i + 1` in docs/SHM.md (slot word 0
//! is the sequence); the tables there mirror these functions.

use super::error::SlotError;
use super::layout::{ROUTE_WORDS, SESSION_WORDS};
use super::{
    IceCredentials, Layer, Rewrite, Role, RouteRecord, RtxOut, SessionRecord, MAX_ICE_PWD,
    MAX_ICE_REMOTE_UFRAG, MAX_ICE_UFRAG, MAX_LAYERS, MAX_MAPPINGS, MAX_MID_LEN,
};
use crate::srtp::{MasterKey, Profile};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

const KEY_WORDS: usize = 6; // 48 bytes ≥ MasterKey::MAX_LEN (46)

fn bytes_to_words<const W: usize>(bytes: &[u8]) -> [u64; W] {
    let mut padded = [0u8; 64];
    padded[..bytes.len()].copy_from_slice(bytes);
    core::array::from_fn(|i| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&padded[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    })
}

fn words_to_bytes<const B: usize>(words: &[u64]) -> [u8; B] {
    let mut out = [0u8; B];
    for (chunk, w) in out.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Session payload words:
/// 0 id · 1 family | role<<8 | rx profile<<16 | tx profile<<24 | port<<32 ·
/// 2–3 IP address (16 bytes; IPv4 in the first 4) · 4 IPv6 flowinfo | scope_id<<32 ·
/// 5–10 rx key ‖ salt (zero-padded to 48 bytes) · 11–16 tx key ‖ salt ·
/// 17 key_epoch | flags<<32 · 18 max_pps ·
/// 19 ICE lengths: local ufrag | local pwd<<8 | remote ufrag<<16 (all 0: no credentials) ·
/// 20–23 local ufrag (32 bytes, zero-padded) · 24–31 local pwd (64 bytes) ·
/// 32–35 remote ufrag (32 bytes) · 36–38 reserved (0).
pub(crate) fn encode_session(r: &SessionRecord) -> [u64; SESSION_WORDS] {
    let mut w = [0u64; SESSION_WORDS];
    w[0] = r.id;
    let (family, ip, flow): (u8, [u8; 16], u64) = match r.peer {
        SocketAddr::V4(a) => {
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&a.ip().octets());
            (4, ip, 0)
        }
        SocketAddr::V6(a) => (
            6,
            a.ip().octets(),
            u64::from(a.flowinfo()) | (u64::from(a.scope_id()) << 32),
        ),
    };
    w[1] = u64::from(family)
        | (u64::from(r.role as u8) << 8)
        | (u64::from(r.rx_key.profile().code()) << 16)
        | (u64::from(r.tx_key.profile().code()) << 24)
        | (u64::from(r.peer.port()) << 32);
    let ipw: [u64; 2] = bytes_to_words(&ip);
    w[2..4].copy_from_slice(&ipw);
    w[4] = flow;
    let rx: [u64; KEY_WORDS] = bytes_to_words(r.rx_key.as_bytes());
    let tx: [u64; KEY_WORDS] = bytes_to_words(r.tx_key.as_bytes());
    w[5..11].copy_from_slice(&rx);
    w[11..17].copy_from_slice(&tx);
    w[17] = u64::from(r.key_epoch) | (u64::from(r.flags) << 32);
    w[18] = u64::from(r.max_pps);
    if let Some(ice) = &r.ice {
        w[19] = ice.ufrag().len() as u64
            | ((ice.pwd().len() as u64) << 8)
            | ((ice.remote_ufrag().len() as u64) << 16);
        let u: [u64; MAX_ICE_UFRAG / 8] = bytes_to_words(ice.ufrag());
        let p: [u64; MAX_ICE_PWD / 8] = bytes_to_words(ice.pwd());
        let ru: [u64; MAX_ICE_REMOTE_UFRAG / 8] = bytes_to_words(ice.remote_ufrag());
        w[ICE_UFRAG..ICE_PWD].copy_from_slice(&u);
        w[ICE_PWD..ICE_REMOTE].copy_from_slice(&p);
        w[ICE_REMOTE..ICE_END].copy_from_slice(&ru);
    }
    w
}

/// Payload word ranges of the ICE credentials.
const ICE_UFRAG: usize = 20;
const ICE_PWD: usize = ICE_UFRAG + MAX_ICE_UFRAG / 8;
const ICE_REMOTE: usize = ICE_PWD + MAX_ICE_PWD / 8;
const ICE_END: usize = ICE_REMOTE + MAX_ICE_REMOTE_UFRAG / 8;
const _: () = assert!(ICE_END <= SESSION_WORDS);

fn decode_ice(w: &[u64; SESSION_WORDS]) -> Result<Option<IceCredentials>, SlotError> {
    let (lu, lp, lr) = (w[19] as u8, (w[19] >> 8) as u8, (w[19] >> 16) as u8);
    if w[19] == 0 {
        return Ok(None);
    }
    let u: [u8; MAX_ICE_UFRAG] = words_to_bytes(&w[ICE_UFRAG..ICE_PWD]);
    let p: [u8; MAX_ICE_PWD] = words_to_bytes(&w[ICE_PWD..ICE_REMOTE]);
    let r: [u8; MAX_ICE_REMOTE_UFRAG] = words_to_bytes(&w[ICE_REMOTE..ICE_END]);
    let bad = SlotError::BadIce(lu, lp, lr);
    if w[19] >> 24 != 0
        || usize::from(lu) > MAX_ICE_UFRAG
        || usize::from(lp) > MAX_ICE_PWD
        || usize::from(lr) > MAX_ICE_REMOTE_UFRAG
    {
        return Err(bad);
    }
    IceCredentials::new(
        &u[..usize::from(lu)],
        &p[..usize::from(lp)],
        &r[..usize::from(lr)],
    )
    .map(Some)
    .map_err(|_| bad)
}

fn profile(code: u8) -> Result<Profile, SlotError> {
    Profile::from_code(code).map_err(|_| SlotError::BadProfile(code))
}

fn key(p: Profile, words: &[u64]) -> MasterKey {
    let bytes: [u8; KEY_WORDS * 8] = words_to_bytes(words);
    // The length is exactly the profile's key_material_len (≤ 46 ≤ 48), so `new` cannot fail.
    MasterKey::new(p, &bytes[..p.key_material_len()]).unwrap_or_else(|_| unreachable!())
}

pub(crate) fn decode_session(w: &[u64; SESSION_WORDS]) -> Result<SessionRecord, SlotError> {
    let meta = w[1];
    let family = meta as u8;
    let role_code = (meta >> 8) as u8;
    let role = Role::from_code(role_code).ok_or(SlotError::BadRole(role_code))?;
    let rx_p = profile((meta >> 16) as u8)?;
    let tx_p = profile((meta >> 24) as u8)?;
    let port = (meta >> 32) as u16;
    let ip: [u8; 16] = words_to_bytes(&w[2..4]);
    let peer = match family {
        4 => SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
            port,
        )),
        6 => SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            w[4] as u32,
            (w[4] >> 32) as u32,
        )),
        f => return Err(SlotError::BadFamily(f)),
    };
    Ok(SessionRecord {
        id: w[0],
        peer,
        role,
        rx_key: key(rx_p, &w[5..11]),
        tx_key: key(tx_p, &w[11..17]),
        key_epoch: w[17] as u32,
        flags: (w[17] >> 32) as u32,
        max_pps: w[18] as u32,
        ice: decode_ice(w)?,
    })
}

/// Route payload words:
/// 0 id · 1 from · 2 to ·
/// 3 has_ssrc | has_rewrite_ssrc<<8 | pt_map_len<<16 | ext_map_len<<24 | ssrc<<32 ·
/// 4 rewrite ssrc · 5–6 pt_map (8 × (from, to) bytes) · 7–8 ext_map ·
/// 9 has_rtx | rtx payload type<<8 | rtx ssrc<<32 ·
/// 10 has_layer | layer index<<8 | layer count<<16 | max layer<<24 | (max temporal + 1)<<32 ·
/// 11 has_source_rtx | its payload type<<8 | its ssrc<<32 · 12–14 below.
pub(crate) fn encode_route(r: &RouteRecord) -> [u64; ROUTE_WORDS] {
    let mut w = [0u64; ROUTE_WORDS];
    w[0] = r.id;
    w[1] = r.from;
    w[2] = r.to;
    w[3] = u64::from(r.ssrc.is_some())
        | (u64::from(r.rewrite.ssrc.is_some()) << 8)
        | (u64::from(r.rewrite.pt_map_len) << 16)
        | (u64::from(r.rewrite.ext_map_len) << 24)
        | (u64::from(r.ssrc.unwrap_or(0)) << 32);
    w[4] = u64::from(r.rewrite.ssrc.unwrap_or(0));
    let pairs = |m: &[(u8, u8); MAX_MAPPINGS]| -> [u64; 2] {
        let mut b = [0u8; 2 * MAX_MAPPINGS];
        for (i, (f, t)) in m.iter().enumerate() {
            b[2 * i] = *f;
            b[2 * i + 1] = *t;
        }
        bytes_to_words(&b)
    };
    w[5..7].copy_from_slice(&pairs(&r.rewrite.pt_map));
    w[7..9].copy_from_slice(&pairs(&r.rewrite.ext_map));
    if let Some(x) = r.rewrite.rtx {
        w[9] = 1 | (u64::from(x.payload_type) << 8) | (u64::from(x.ssrc) << 32);
    }
    if let Some(x) = r.rewrite.source_rtx {
        w[11] = 1 | (u64::from(x.payload_type) << 8) | (u64::from(x.ssrc) << 32);
    }
    // Word 12: MID id | MID length << 8 | keyframe bits << 16 | transport-wide sequence
    // extension id << 24 (0: none) | Dependency Descriptor id << 32 (0: none); words 13–14:
    // the MID value.
    w[12] = u64::from(r.rewrite.mid_id)
        | (u64::from(r.rewrite.mid_len) << 8)
        | (u64::from(r.rewrite.keyframe) << 16)
        | (u64::from(r.rewrite.twcc_id) << 24)
        | (u64::from(r.rewrite.dd_id) << 32);
    if let Some(l) = r.rewrite.layer {
        // The temporal cap is stored plus one, so 0 (what ABI 7 writers leave) means none.
        w[10] = 1
            | (u64::from(l.index) << 8)
            | (u64::from(l.count) << 16)
            | (u64::from(l.max) << 24)
            | (u64::from(l.max_temporal.wrapping_add(1)) << 32);
    }
    w[13..15].copy_from_slice(&bytes_to_words::<2>(&r.rewrite.mid));
    w
}

/// Checks a route before it is written, with the same rules the reader applies.
pub(crate) fn validate_route(r: &RouteRecord) -> Result<(), SlotError> {
    if r.from == 0 || r.to == 0 {
        return Err(SlotError::ZeroEndpoint);
    }
    for len in [r.rewrite.pt_map_len, r.rewrite.ext_map_len] {
        if usize::from(len) > MAX_MAPPINGS {
            return Err(SlotError::MapTooLong(len));
        }
    }
    let rw = &r.rewrite;
    if usize::from(rw.mid_len) > MAX_MID_LEN || (rw.mid_len > 0 && rw.mid_id == 0) {
        return Err(SlotError::BadMid(rw.mid_len));
    }
    if rw.keyframe & !(super::keyframe::PLI | super::keyframe::FIR) != 0 {
        return Err(SlotError::BadFlag(rw.keyframe));
    }
    if let Some(x) = r.rewrite.rtx {
        if x.payload_type > 127 || (r.ssrc.is_none() && r.rewrite.ssrc.is_none()) {
            return Err(SlotError::BadRtx(x.payload_type));
        }
    }
    if let Some(x) = r.rewrite.source_rtx {
        if x.payload_type > 127 || r.ssrc.is_none() {
            return Err(SlotError::BadRtx(x.payload_type));
        }
    }
    if let Some(l) = r.rewrite.layer {
        if l.count == 0
            || l.count > MAX_LAYERS
            || l.index >= l.count
            || (l.max_temporal > Layer::MAX_TEMPORAL && l.max_temporal != Layer::NO_CAP)
            || r.ssrc.is_none()
            || r.rewrite.ssrc.is_none()
        {
            return Err(SlotError::BadLayer(l.index, l.count));
        }
    }
    if rw.dd_id != 0 && rw.layer.is_none_or(|l| l.count != 1) {
        let (index, count) = rw.layer.map_or((0, 0), |l| (l.index, l.count));
        return Err(SlotError::BadLayer(index, count));
    }
    Ok(())
}

pub(crate) fn decode_route(w: &[u64; ROUTE_WORDS]) -> Result<RouteRecord, SlotError> {
    let flag = |b: u8| match b {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(SlotError::BadFlag(other)),
    };
    let meta = w[3];
    let has_ssrc = flag(meta as u8)?;
    let has_rw = flag((meta >> 8) as u8)?;
    let pt_len = (meta >> 16) as u8;
    let ext_len = (meta >> 24) as u8;
    let ssrc = (meta >> 32) as u32;
    let has_rtx = flag(w[9] as u8)?;
    let rtx = has_rtx.then_some(RtxOut {
        payload_type: (w[9] >> 8) as u8,
        ssrc: (w[9] >> 32) as u32,
    });
    let source_rtx = flag(w[11] as u8)?.then_some(RtxOut {
        payload_type: (w[11] >> 8) as u8,
        ssrc: (w[11] >> 32) as u32,
    });
    let layer = flag(w[10] as u8)?.then_some(Layer {
        index: (w[10] >> 8) as u8,
        count: (w[10] >> 16) as u8,
        max: (w[10] >> 24) as u8,
        max_temporal: ((w[10] >> 32) as u8).wrapping_sub(1),
    });
    let pairs = |words: &[u64]| -> [(u8, u8); MAX_MAPPINGS] {
        let b: [u8; 2 * MAX_MAPPINGS] = words_to_bytes(words);
        core::array::from_fn(|i| (b[2 * i], b[2 * i + 1]))
    };
    let r = RouteRecord {
        id: w[0],
        from: w[1],
        to: w[2],
        ssrc: has_ssrc.then_some(ssrc),
        rewrite: Rewrite {
            ssrc: has_rw.then_some(w[4] as u32),
            pt_map: pairs(&w[5..7]),
            pt_map_len: pt_len,
            ext_map: pairs(&w[7..9]),
            ext_map_len: ext_len,
            mid: words_to_bytes(&w[13..15]),
            mid_len: (w[12] >> 8) as u8,
            mid_id: w[12] as u8,
            keyframe: (w[12] >> 16) as u8,
            twcc_id: (w[12] >> 24) as u8,
            dd_id: (w[12] >> 32) as u8,
            rtx,
            source_rtx,
            layer,
        },
    };
    validate_route(&r)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(peer: SocketAddr, role: Role, rx: Profile, tx: Profile) -> SessionRecord {
        let rx_bytes: Vec<u8> = (0..rx.key_material_len() as u8).collect();
        let tx_bytes: Vec<u8> = (0..tx.key_material_len() as u8).map(|b| !b).collect();
        SessionRecord {
            id: 0x0123_4567_89ab_cdef,
            peer,
            role,
            rx_key: MasterKey::new(rx, &rx_bytes).unwrap(),
            tx_key: MasterKey::new(tx, &tx_bytes).unwrap(),
            key_epoch: 0xdead_beef,
            flags: 0x8000_0003,
            max_pps: u32::MAX,
            ice: None,
        }
    }

    #[test]
    fn session_round_trip() {
        let v6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
            "2001:db8::1".parse().unwrap(),
            65535,
            0x000f_ffff,
            7,
        ));
        for peer in ["192.0.2.7:5004".parse().unwrap(), v6] {
            for role in Role::ALL {
                for rx in Profile::ALL {
                    for tx in Profile::ALL {
                        let r = session(peer, role, rx, tx);
                        assert_eq!(decode_session(&encode_session(&r)).unwrap(), r);
                        let ice = IceCredentials::new(
                            &[b'u'; MAX_ICE_UFRAG],
                            &[b'p'; MAX_ICE_PWD],
                            b"rEm0",
                        )
                        .unwrap();
                        let r = SessionRecord {
                            ice: Some(ice),
                            ..r
                        };
                        assert_eq!(decode_session(&encode_session(&r)).unwrap(), r);
                    }
                }
            }
        }
    }

    #[test]
    fn bad_codes_are_errors() {
        let r = session(
            "10.0.0.1:1".parse().unwrap(),
            Role::Host,
            Profile::AeadAes128Gcm,
            Profile::AeadAes128Gcm,
        );
        let mut w = encode_session(&r);
        w[1] = (w[1] & !0xff00) | (9 << 8);
        assert_eq!(decode_session(&w), Err(SlotError::BadRole(9)));
        let mut w = encode_session(&r);
        w[1] = (w[1] & !0xff_0000) | (77 << 16);
        assert_eq!(decode_session(&w), Err(SlotError::BadProfile(77)));
        let mut w = encode_session(&r);
        w[1] = (w[1] & !0xff) | 5;
        assert_eq!(decode_session(&w), Err(SlotError::BadFamily(5)));
        let mut w = encode_session(&r);
        w[19] = 8 | (65 << 8) | (4 << 16);
        assert_eq!(decode_session(&w), Err(SlotError::BadIce(8, 65, 4)));
        w[19] = 8 | (4 << 16);
        assert_eq!(decode_session(&w), Err(SlotError::BadIce(8, 0, 4)));
        w[19] = 33;
        assert_eq!(decode_session(&w), Err(SlotError::BadIce(33, 0, 0)));

        let route = RouteRecord {
            id: 1,
            from: 2,
            ssrc: None,
            to: 3,
            rewrite: Rewrite::default(),
        };
        let mut w = encode_route(&route);
        w[3] |= 9 << 16;
        assert_eq!(decode_route(&w), Err(SlotError::MapTooLong(9)));
        let mut w = encode_route(&route);
        w[3] |= 2;
        assert_eq!(decode_route(&w), Err(SlotError::BadFlag(2)));
        let mut w = encode_route(&route);
        w[2] = 0;
        assert_eq!(decode_route(&w), Err(SlotError::ZeroEndpoint));
        // RTX: needs a single-stream route and a payload type up to 127.
        let rtx = RtxOut {
            payload_type: 97,
            ssrc: 0xdead_beef,
        };
        let mut one = route;
        one.ssrc = Some(5);
        one.rewrite.rtx = Some(rtx);
        assert_eq!(decode_route(&encode_route(&one)), Ok(one));
        let mut w = encode_route(&one);
        w[9] |= 2;
        assert_eq!(decode_route(&w), Err(SlotError::BadFlag(3)));
        let mut w = encode_route(&one);
        w[9] = (w[9] & !0xff00) | (200 << 8);
        assert_eq!(decode_route(&w), Err(SlotError::BadRtx(200)));
        let mut many = route;
        many.rewrite.rtx = Some(rtx);
        assert_eq!(
            decode_route(&encode_route(&many)),
            Err(SlotError::BadRtx(97))
        );
        // The publisher's RTX: needs the route's SSRC filter (a rewritten SSRC is not enough).
        one.rewrite.source_rtx = Some(RtxOut {
            payload_type: 98,
            ssrc: 0x5eed,
        });
        assert_eq!(decode_route(&encode_route(&one)), Ok(one));
        let mut unfiltered = one;
        unfiltered.ssrc = None;
        unfiltered.rewrite.ssrc = Some(9);
        assert_eq!(
            decode_route(&encode_route(&unfiltered)),
            Err(SlotError::BadRtx(98))
        );
        // Simulcast layer: round-trips on a single-stream rewriting route, refused elsewhere.
        let mut layered = one;
        layered.rewrite.ssrc = Some(77);
        layered.rewrite.layer = Some(Layer {
            index: 2,
            count: 3,
            max: 1,
            max_temporal: 2,
        });
        assert_eq!(decode_route(&encode_route(&layered)), Ok(layered));
        // No temporal cap round-trips; a word written without one (ABI 7) reads as none; a
        // TID past 3 is refused.
        let mut uncapped = layered;
        uncapped.rewrite.layer = uncapped.rewrite.layer.map(|l| Layer {
            max_temporal: Layer::NO_CAP,
            ..l
        });
        assert_eq!(encode_route(&uncapped)[10] >> 32, 0);
        assert_eq!(decode_route(&encode_route(&uncapped)), Ok(uncapped));
        let mut w = encode_route(&layered);
        w[10] = (w[10] & 0xFFFF_FFFF) | (5 << 32);
        assert_eq!(decode_route(&w), Err(SlotError::BadLayer(2, 3)));
        let mut w = encode_route(&layered);
        w[10] = (w[10] & !0xff00) | (3 << 8);
        assert_eq!(decode_route(&w), Err(SlotError::BadLayer(3, 3)));
        let mut w = encode_route(&layered);
        w[10] |= 4;
        assert_eq!(decode_route(&w), Err(SlotError::BadFlag(5)));
        let mut no_rewrite = layered;
        no_rewrite.rewrite.ssrc = None;
        no_rewrite.rewrite.rtx = None;
        assert_eq!(
            decode_route(&encode_route(&no_rewrite)),
            Err(SlotError::BadLayer(2, 3))
        );
        // An SVC route: the Dependency Descriptor id round-trips with a one-layer route and
        // is refused on a simulcast layer or without a layer.
        let mut svc = layered;
        svc.rewrite.layer = Some(Layer {
            index: 0,
            count: 1,
            max: 0,
            max_temporal: 0,
        });
        svc.rewrite.dd_id = 12;
        assert_eq!(encode_route(&svc)[12] >> 32, 12);
        assert_eq!(decode_route(&encode_route(&svc)), Ok(svc));
        let mut on_simulcast = layered;
        on_simulcast.rewrite.dd_id = 12;
        assert_eq!(
            decode_route(&encode_route(&on_simulcast)),
            Err(SlotError::BadLayer(2, 3))
        );
        let mut no_layer = svc;
        no_layer.rewrite.layer = None;
        assert_eq!(
            decode_route(&encode_route(&no_layer)),
            Err(SlotError::BadLayer(0, 0))
        );
    }
}
