//! RTP: parse, read every field, iterate extensions, then rewrite a copy in place.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::wire::rtp::{RtpMut, RtpPacket};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = RtpPacket::parse(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.padding(),
        p.extension(),
        p.marker(),
        p.payload_type(),
    );
    let _ = (p.sequence(), p.timestamp(), p.ssrc(), p.csrcs().count());
    let range = p.payload_range();
    assert!(p.header_len() == range.start && range.end <= data.len());
    assert_eq!(range.end + p.padding_len(), data.len());
    let _ = (
        p.extension_profile(),
        p.extension_form(),
        p.extension_data(),
    );
    for (id, d) in p.extensions() {
        assert!(id != 0 && d.len() <= data.len());
    }

    // Mutators on a copy; the id map comes from the first payload bytes.
    let mut copy = data.to_vec();
    let map: Vec<(u8, u8)> = p
        .payload()
        .chunks_exact(2)
        .take(4)
        .map(|c| (c[0], c[1]))
        .collect();
    let mut m = RtpMut::parse(&mut copy).expect("same bytes parse twice");
    m.set_ssrc(0x5EED_5EED);
    m.set_sequence(0xFFFF);
    m.set_timestamp(1);
    m.set_marker(!p.marker());
    let _ = m.set_payload_type(data.len() as u8);
    let _ = m.remap_extension_ids(&map);
    let q = RtpPacket::parse(&copy).expect("rewrites keep the packet valid");
    assert_eq!(q.ssrc(), 0x5EED_5EED);
    assert_eq!(q.payload(), p.payload());
});
