//! SDP (WHIP/WHEP offers): `Offer::parse` on arbitrary text, then `answer` it both as a WHIP
//! ingest and as a WHEP egress. Every accepted answer section must come from an offer section
//! with the same mid, its codecs must be ones we support, and the payload-type and
//! extension maps between the offer's own sections must be computable.
#![no_main]
#![deny(unsafe_code)]

use control::webrtc::dtls::Fingerprint;
use control::webrtc::sdp::{
    answer, codec_supported, ext_map, pt_map, AnswerConfig, Endpoint, Offer,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";

/// The answer configuration, the same for every input (built once).
fn config() -> &'static AnswerConfig {
    static C: OnceLock<AnswerConfig> = OnceLock::new();
    C.get_or_init(|| AnswerConfig {
        ice_ufrag: "sluiceUF".into(),
        ice_pwd: "sluicepasswordsluicepass".into(),
        fingerprint: Fingerprint::parse(FP).expect("valid literal fingerprint"),
        candidates: vec![
            "203.0.113.7:3478".parse().expect("literal address"),
            "[2001:db8::7]:3478".parse().expect("literal address"),
        ],
        tcp_candidates: vec!["203.0.113.7:443".parse().expect("literal address")],
        session_id: 42,
        send_ssrcs: vec![0x1000, 0x2000, 0x3000],
        send_rtx_ssrcs: vec![0x1001, 0x2001, 0x3001],
        cname: "sluice".into(),
        publishers: Vec::new(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = Offer::parse(text) else {
        return;
    };
    for m in &offer.media {
        let _ = m.ssrc_list();
        for c in &m.codecs {
            let _ = c.params();
            let _ = codec_supported(&m.kind, c);
        }
        let _ = m.kind.name();
    }
    if let (Some(a), Some(b)) = (offer.media.first(), offer.media.last()) {
        let _ = pt_map(&a.codecs, &b.codecs);
        let _ = ext_map(&a.extmaps, &b.extmaps);
    }
    let cfg = config();
    for endpoint in [Endpoint::Whip, Endpoint::Whep] {
        let Ok(ans) = answer(&offer, endpoint, cfg) else {
            continue;
        };
        assert!(ans.sdp.starts_with("v=0\r\n"));
        for nm in ans.media.iter().filter(|nm| nm.accepted) {
            assert!(
                offer
                    .media
                    .iter()
                    .any(|m| m.mid.as_deref() == Some(nm.mid.as_str())),
                "accepted section comes from the offer"
            );
            for c in &nm.codecs {
                assert!(codec_supported(&nm.kind, c), "unsupported codec accepted");
            }
        }
    }
});
