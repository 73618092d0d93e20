//! Demux: classify, then hand the datagram to the parser its class names, as the engine does.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::wire::{classify, dtls, rtcp, rtp, stun, Kind};

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        Kind::Empty => assert!(data.is_empty()),
        Kind::Stun => {
            let _ = stun::StunMessage::parse(data).map(|m| m.verify_fingerprint());
        }
        Kind::Dtls => {
            for r in dtls::records(data) {
                if r.is_err() {
                    break;
                }
            }
        }
        Kind::Rtp => {
            let _ = rtp::RtpPacket::parse(data).map(|p| p.extensions().count());
        }
        Kind::Rtcp => {
            for p in rtcp::packets(data) {
                let Ok(p) = p else { break };
                let _ = p.typed();
            }
        }
        Kind::Zrtp | Kind::TurnChannel | Kind::Unknown => {}
    }
});
