//! RTCP: iterate a compound packet, build every typed view, then rewrite SSRCs in a copy.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::wire::rtcp::{packets, packets_mut, Rtcp};

fuzz_target!(|data: &[u8]| {
    let mut count = 0usize;
    for p in packets(data) {
        let Ok(p) = p else { break };
        count += 1;
        let _ = (
            p.version(),
            p.padding(),
            p.count(),
            p.packet_type(),
            p.length_words(),
        );
        assert!(p.body().len() + 4 <= p.as_bytes().len());
        match p.typed() {
            Ok(Rtcp::SenderReport(sr)) => {
                let _ = (sr.ssrc(), sr.ntp_timestamp(), sr.rtp_timestamp());
                let _ = (
                    sr.packet_count(),
                    sr.octet_count(),
                    sr.report_blocks().count(),
                );
            }
            Ok(Rtcp::ReceiverReport(rr)) => {
                let _ = (rr.ssrc(), rr.report_blocks().count());
            }
            Ok(Rtcp::Sdes(s)) => {
                for c in s.chunks() {
                    let _ = (c.ssrc, c.items().count());
                }
            }
            Ok(Rtcp::Bye(b)) => {
                let _ = (b.ssrcs().count(), b.reason());
            }
            Ok(Rtcp::App(a)) => {
                let _ = (a.subtype, a.ssrc(), a.name(), a.data());
            }
            Ok(Rtcp::Nack(n)) => {
                let _ = (n.pairs().count(), n.lost().count());
            }
            Ok(Rtcp::Fir(f)) => {
                let _ = f.entries().count();
            }
            Ok(Rtcp::Remb(r)) => {
                let _ = (r.bitrate(), r.ssrcs().count());
            }
            Ok(Rtcp::TransportCc(f) | Rtcp::Pli(f) | Rtcp::Feedback(f)) => {
                let _ = (f.sender_ssrc(), f.media_ssrc(), f.fci());
            }
            Ok(Rtcp::Other(_)) | Err(_) => {}
        }
    }

    let mut copy = data.to_vec();
    let mut again = 0usize;
    for p in packets_mut(&mut copy) {
        let Ok(mut p) = p else { break };
        again += 1;
        let _ = p.set_sender_ssrc(1);
        let _ = p.set_media_ssrc(2);
        let _ = p.map_fir_ssrcs(|s| s.rotate_left(1));
        let _ = p.packet().typed();
    }
    assert_eq!(count, again, "mutable and shared iteration agree");
    assert_eq!(copy.len(), data.len());
});
