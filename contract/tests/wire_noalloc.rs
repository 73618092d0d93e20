//! Proves that `contract::wire` parses, iterates and rewrites without allocating.
//!
//! A counting global allocator (delegating to the system allocator) counts allocations made
//! by the current thread while a closure runs; packets are built before counting starts.
// `GlobalAlloc` can only be implemented with `unsafe`; this test crate needs nothing else unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

use contract::wire::{classify, dtls, rtcp, rtp, stun, Kind};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    // `try_with` so that allocations during thread teardown are never a problem.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counter is a
// const-initialised thread-local `Cell` that neither allocates nor has a destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: `ptr`/`layout` came from this allocator; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns how many allocations this thread made meanwhile.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    let after = ALLOCS.with(Cell::get);
    (after - before, r)
}

/// The counter itself works: a `Vec` allocation is seen.
#[test]
fn counter_sees_allocations() {
    let (n, v) = allocations(|| vec![1u8; 64]);
    assert!(n >= 1);
    assert_eq!(v.len(), 64);
}

fn rtp_packet() -> Vec<u8> {
    let mut p = vec![
        0x80 | 0x10 | 0x20 | 1,
        0x80 | 96,
        0,
        1,
        0,
        0,
        0,
        2,
        0,
        0,
        0,
        3,
    ];
    p.extend_from_slice(&[0, 0, 0, 4]); // CSRC
    p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 0xAA, 0x21, 1, 2, 0, 0, 0]);
    p.extend_from_slice(b"payload");
    p.extend_from_slice(&[0, 2]); // padding
    p
}

fn rtcp_compound() -> Vec<u8> {
    fn pkt(count: u8, pt: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | count, pt];
        v.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
    let w = |ws: &[u32]| -> Vec<u8> { ws.iter().flat_map(|x| x.to_be_bytes()).collect() };
    let mut sr = w(&[1, 2, 3, 4, 5, 6]);
    sr.extend(w(&[9, 0x0100_0001, 3, 4, 5, 6]));
    let mut c = pkt(1, 200, &sr);
    c.extend(pkt(1, 202, &[0, 0, 0, 1, 1, 2, b'h', b'i', 0, 0, 0, 0]));
    c.extend(pkt(1, 205, &w(&[1, 2, (10 << 16) | 0xFF])));
    c.extend(pkt(1, 206, &w(&[1, 2])));
    c.extend(pkt(4, 206, &w(&[1, 0, 7, 1 << 24])));
    let mut remb = w(&[1, 0]);
    remb.extend_from_slice(b"REMB");
    remb.extend(w(&[(1 << 24) | 1000, 9]));
    c.extend(pkt(15, 206, &remb));
    c.extend(pkt(2, 203, &w(&[1, 2])));
    c
}

fn dtls_datagram() -> Vec<u8> {
    let mut hs = vec![1, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 10];
    hs.extend_from_slice(&[0xAB; 10]);
    let mut d = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1];
    d.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    d.extend_from_slice(&hs);
    d
}

#[test]
fn rtp_parse_iterate_rewrite_allocates_nothing() {
    let mut p = rtp_packet();
    let (n, sum) = allocations(|| {
        let r = rtp::RtpPacket::parse(&p).expect("valid packet");
        let mut sum = u64::from(r.ssrc()) + r.csrcs().map(u64::from).sum::<u64>();
        for (id, d) in r.extensions() {
            sum += u64::from(id) + d.len() as u64;
        }
        sum += r.payload().len() as u64 + r.padding_len() as u64;
        let mut m = rtp::RtpMut::parse(&mut p).expect("valid packet");
        m.set_ssrc(0xABCD);
        m.set_sequence(9);
        m.set_timestamp(10);
        m.set_payload_type(100).expect("pt in range");
        sum += m.remap_extension_ids(&[(1, 5), (2, 6)]).expect("valid map") as u64;
        sum
    });
    assert_eq!(n, 0, "RTP path allocated");
    assert!(sum > 0);
    assert_eq!(rtp::RtpPacket::parse(&p).unwrap().ssrc(), 0xABCD);
}

#[test]
fn rtcp_iterate_and_rewrite_allocates_nothing() {
    let mut c = rtcp_compound();
    let (n, seen) = allocations(|| {
        let mut seen = 0u64;
        for p in rtcp::packets(&c) {
            let p = p.expect("valid packet");
            match p.typed().expect("valid body") {
                rtcp::Rtcp::SenderReport(sr) => {
                    seen += sr.report_blocks().map(|b| u64::from(b.ssrc)).sum::<u64>()
                }
                rtcp::Rtcp::Sdes(s) => {
                    for ch in s.chunks() {
                        seen += ch.items().count() as u64;
                    }
                }
                rtcp::Rtcp::Nack(nk) => seen += nk.lost().count() as u64,
                rtcp::Rtcp::Fir(f) => seen += f.entries().count() as u64,
                rtcp::Rtcp::Remb(r) => seen += r.bitrate() + r.ssrcs().count() as u64,
                rtcp::Rtcp::Bye(b) => seen += b.ssrcs().count() as u64,
                _ => seen += 1,
            }
        }
        for p in rtcp::packets_mut(&mut c) {
            let mut p = p.expect("valid packet");
            p.set_sender_ssrc(77).expect("has a sender SSRC");
            if p.packet_type() == rtcp::packet_type::PSFB {
                p.set_media_ssrc(88).expect("feedback");
                let _ = p.map_fir_ssrcs(|_| 99);
            }
        }
        seen
    });
    assert_eq!(n, 0, "RTCP path allocated");
    assert!(seen > 0);
}

#[test]
fn stun_parse_verify_write_allocates_nothing() {
    // Build a request first (outside the counted region), then parse, verify and answer it.
    let mut req = [0u8; 128];
    let mut w = stun::StunWriter::new(
        &mut req,
        stun::message_type(stun::METHOD_BINDING, stun::Class::Request),
        &[5; 12],
    )
    .unwrap();
    w.username(b"remote:local").unwrap();
    w.priority(1234).unwrap();
    w.use_candidate().unwrap();
    w.ice_controlling(42).unwrap();
    w.message_integrity(b"password").unwrap();
    w.fingerprint().unwrap();
    let len = w.finish();
    let peer: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();

    let mut resp = [0u8; 128];
    let (n, out_len) = allocations(|| {
        let m = stun::StunMessage::parse(&req[..len]).expect("valid request");
        assert!(m.is_binding_request());
        assert_eq!(m.username(), Some(&b"remote:local"[..]));
        assert!(m.use_candidate());
        m.verify_integrity(b"password").expect("integrity");
        m.verify_fingerprint().expect("fingerprint");
        let mut w = stun::StunWriter::binding_success(&mut resp, &m).expect("room");
        w.xor_mapped_address(peer).expect("room");
        w.message_integrity(b"password").expect("room");
        w.fingerprint().expect("room");
        w.finish()
    });
    assert_eq!(n, 0, "STUN path allocated");
    let r = stun::StunMessage::parse(&resp[..out_len]).unwrap();
    assert_eq!(r.xor_mapped_address(), Some(peer));
}

#[test]
fn dtls_and_demux_allocate_nothing() {
    let d = dtls_datagram();
    let rtp = rtp_packet();
    let (n, found) = allocations(|| {
        let mut found = 0;
        for rec in dtls::records(&d) {
            for hs in rec.expect("valid record").handshakes() {
                found += usize::from(hs.expect("valid fragment").is_client_hello());
            }
        }
        found += usize::from(dtls::starts_client_hello(&d));
        found += usize::from(classify(&d) == Kind::Dtls);
        found += usize::from(classify(&rtp) == Kind::Rtp);
        found
    });
    assert_eq!(n, 0, "DTLS/demux path allocated");
    assert_eq!(found, 4);
}
