//! Routing-logic tests over a transparent test cipher (a keyed checksum tag, no encryption), so
//! that every rewrite is visible on the wire. The SRTP transforms themselves are exercised with
//! real keys in `relay/tests/engine_*.rs`.

use super::index::OWNER_NONE;
use super::*;
use contract::shm::{DropReason, Rewrite, Role, RouteRecord, SessionRecord, MAX_MAPPINGS};
use contract::srtp::{Error, MasterKey, Profile};
use contract::wire::rtcp::{fmt, packet_type};
use contract::wire::twcc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Appends a 4-byte tag: FNV-1a over key ‖ packet. Unprotect checks and strips it.
pub(super) struct TagCipher {
    key: MasterKey,
    /// ROCs set by the engine's stream-state seeding (the tag cipher has no index).
    rocs: Vec<(u32, u32)>,
}

fn tag(key: &MasterKey, data: &[u8]) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key.as_bytes().iter().chain(data) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes()
}

impl TagCipher {
    fn seal(&self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        if buf.len() < len + 4 {
            return Err(Error::BufferTooSmall);
        }
        let t = tag(&self.key, &buf[..len]);
        buf[len..len + 4].copy_from_slice(&t);
        Ok(len + 4)
    }
    fn open(&self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        if len < 12 + 4 {
            return Err(Error::Malformed);
        }
        let n = len - 4;
        if tag(&self.key, &buf[..n])[..] != buf[n..len] {
            return Err(Error::AuthFailed);
        }
        Ok(n)
    }
}

impl SrtpOps for TagCipher {
    fn create(key: MasterKey, _: ContextOptions) -> Result<Self, Error> {
        Ok(TagCipher {
            key,
            rocs: Vec::new(),
        })
    }
    fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), Error> {
        self.rocs.retain(|(s, _)| *s != ssrc);
        self.rocs.push((ssrc, roc));
        Ok(())
    }
    fn roc(&self, ssrc: u32) -> Option<u32> {
        self.rocs.iter().find(|(s, _)| *s == ssrc).map(|(_, r)| *r)
    }
    fn rekey(&mut self, key: MasterKey) -> Result<(), Error> {
        self.key = key;
        Ok(())
    }
    fn protect_rtp(&mut self, b: &mut [u8], l: usize) -> Result<usize, Error> {
        self.seal(b, l)
    }
    fn unprotect_rtp(&mut self, b: &mut [u8], l: usize) -> Result<usize, Error> {
        self.open(b, l)
    }
    fn protect_rtcp(&mut self, b: &mut [u8], l: usize) -> Result<usize, Error> {
        self.seal(b, l)
    }
    fn unprotect_rtcp(&mut self, b: &mut [u8], l: usize) -> Result<usize, Error> {
        self.open(b, l)
    }
    fn resume_rtp(&mut self, ssrc: u32, highest: u64) -> Result<(), Error> {
        self.set_roc(ssrc, (highest >> 16) as u32)
    }
    fn resume_rtcp(&mut self, _ssrc: u32, _highest: u64) -> Result<(), Error> {
        Ok(())
    }
    fn srtcp_index(&self, _ssrc: u32) -> Option<u64> {
        None
    }
}

pub(super) fn key(n: u8) -> MasterKey {
    MasterKey::new(Profile::Aes128CmSha1_80, &[n; 30]).unwrap()
}

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

pub(super) fn session(id: u64, role: Role) -> SessionRecord {
    SessionRecord {
        id,
        peer: addr(id as u16 + 1000),
        role,
        rx_key: key(id as u8),
        tx_key: key(id as u8 + 100),
        key_epoch: 1,
        flags: 0,
        max_pps: 0,
        ice: None,
    }
}

/// Publishers 1 and 2 (speakers), subscriber 3 (viewer), on `routes`.
fn two_speakers_one_viewer(routes: Vec<RouteRecord>) -> Rig {
    Rig::new(
        vec![
            session(1, Role::Speaker),
            session(2, Role::Speaker),
            session(3, Role::Viewer),
        ],
        routes,
    )
}

pub(super) fn route(id: u64, from: u64, ssrc: Option<u32>, to: u64, rw: Rewrite) -> RouteRecord {
    RouteRecord {
        id,
        from,
        ssrc,
        to,
        rewrite: rw,
    }
}

pub(super) fn rtp(ssrc: u32, seq: u16, ts: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, pt];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub(super) struct Rig {
    pub(super) fwd: Forwarder<TagCipher>,
    sessions: Vec<SessionRecord>,
    pub(super) routes: Vec<RouteRecord>,
    tx: TxQueue,
    slow: TxQueue,
}

impl Rig {
    pub(super) fn new(sessions: Vec<SessionRecord>, routes: Vec<RouteRecord>) -> Rig {
        let mut r = Rig {
            fwd: Forwarder::new(ContextOptions::default()),
            sessions,
            routes,
            tx: TxQueue::with_capacity(64),
            slow: TxQueue::with_capacity(8),
        };
        r.rebuild();
        r
    }
    pub(super) fn rebuild(&mut self) -> RebuildReport {
        let mut s = self.sessions.clone();
        let mut r = self.routes.clone();
        self.fwd.rebuild(&mut s, &mut r)
    }
    /// Send `plain` from session `id` (sealed with its rx key); returns what came out.
    pub(super) fn send(&mut self, id: u64, plain: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        let s = *self.sessions.iter().find(|s| s.id == id).unwrap();
        self.send_from(s.peer, &s.rx_key, plain)
    }
    fn send_from(
        &mut self,
        src: SocketAddr,
        k: &MasterKey,
        plain: &[u8],
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; crate::batch::MAX_DATAGRAM];
        buf[..plain.len()].copy_from_slice(plain);
        let n = TagCipher {
            key: *k,
            rocs: Vec::new(),
        }
        .seal(&mut buf, plain.len())
        .unwrap();
        self.send_raw(src, &mut buf, n)
    }
    fn send_raw(
        &mut self,
        src: SocketAddr,
        buf: &mut [u8],
        n: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        self.tx.clear();
        self.fwd.handle(src, buf, n, &mut self.tx, &mut self.slow);
        self.opened_tx()
    }
    /// What `tx` holds, each datagram opened with its subscriber's key.
    fn opened_tx(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        (0..self.tx.len())
            .map(|i| {
                let dst = self.tx.metas()[i].dst;
                let sub = self.sessions.iter().find(|s| s.peer == dst).unwrap();
                let mut d = self.tx.datagram(i).to_vec();
                let l = d.len();
                let n = TagCipher {
                    key: sub.tx_key,
                    rocs: Vec::new(),
                }
                .open(&mut d, l)
                .expect("subscriber tag");
                d.truncate(n);
                (dst, d)
            })
            .collect()
    }
}

/// One speaker (session 1) routed to `viewers` viewers (sessions 2, 3, ...).
fn one_speaker_many_viewers(viewers: u64) -> Rig {
    let mut sessions = vec![session(1, Role::Speaker)];
    let mut routes = Vec::new();
    for v in 0..viewers {
        sessions.push(session(2 + v, Role::Viewer));
        routes.push(route(1 + v, 1, None, 2 + v, Rewrite::default()));
    }
    Rig::new(sessions, routes)
}

#[test]
fn a_fan_out_larger_than_the_queue_resumes_after_each_send() {
    // 150 viewers, a queue of 64: the worker sends the full queue and the engine goes on
    // where it stopped, until every viewer has the packet exactly once.
    let mut rig = one_speaker_many_viewers(150);
    let pkt = rtp(0x1111, 7, 900, 96, b"to everyone");
    let mut got = rig.send(1, &pkt);
    assert_eq!(got.len(), 64, "the first queue's worth");
    let mut sends = 1;
    loop {
        rig.tx.clear();
        let more = rig.fwd.resume(&mut rig.tx);
        got.extend(rig.opened_tx());
        sends += 1;
        if !more {
            break;
        }
    }
    assert_eq!(sends, 3, "150 outputs in queues of 64");
    let mut dsts: Vec<SocketAddr> = got.iter().map(|(d, _)| *d).collect();
    dsts.sort();
    dsts.dedup();
    assert_eq!(dsts.len(), 150, "every viewer once");
    assert!(got.iter().all(|(_, p)| *p == pkt));
    let st = rig.fwd.stats();
    assert_eq!(st.packets_out, 150);
    assert_eq!(st.dropped(DropReason::TxQueueFull), 0);
    // Nothing is pending any more: the next packet starts a fresh fan-out.
    assert!(!rig.fwd.resume(&mut rig.tx));
}

#[test]
fn a_pending_fan_out_that_cannot_be_sent_is_counted_as_dropped() {
    let mut rig = one_speaker_many_viewers(100);
    let got = rig.send(1, &rtp(0x1111, 1, 1, 96, b"x"));
    assert_eq!(got.len(), 64);
    // The queue could not be sent: the 36 viewers not reached are drops, by reason.
    rig.fwd.abandon();
    assert_eq!(rig.fwd.stats().dropped(DropReason::TxQueueFull), 36);
    assert!(!rig.fwd.resume(&mut rig.tx));
    // A caller that hands the next datagram without sending the queue gets the same.
    let mut rig = one_speaker_many_viewers(100);
    rig.send(1, &rtp(0x1111, 1, 1, 96, b"x"));
    let got = rig.send(1, &rtp(0x1111, 2, 1, 96, b"y"));
    assert_eq!(got.len(), 64);
    assert_eq!(rig.fwd.stats().dropped(DropReason::TxQueueFull), 36);
}

fn rw_ssrc(x: u32) -> Rewrite {
    Rewrite {
        ssrc: Some(x),
        ..Rewrite::default()
    }
}

#[test]
fn fan_out_with_rewrite() {
    let mut pt_map = [(0u8, 0u8); MAX_MAPPINGS];
    pt_map[0] = (96, 100);
    let rw = Rewrite {
        ssrc: Some(0xAAAA),
        pt_map,
        pt_map_len: 1,
        ..Rewrite::default()
    };
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(2, Role::Viewer),
            session(3, Role::Viewer),
        ],
        vec![
            route(1, 1, Some(0x1111), 2, rw),
            route(2, 1, None, 3, Rewrite::default()),
        ],
    );
    let out = rig.send(1, &rtp(0x1111, 5, 900, 96, b"hello"));
    assert_eq!(out.len(), 2);
    let (d2, p2) = &out[0];
    assert_eq!(*d2, addr(1002));
    assert_eq!(p2, &rtp(0xAAAA, 5, 900, 100, b"hello"));
    assert_eq!(out[1], (addr(1003), rtp(0x1111, 5, 900, 96, b"hello")));
    // Another SSRC only matches the any-SSRC route.
    let out = rig.send(1, &rtp(0x2222, 1, 1, 97, b"x"));
    assert_eq!(out, vec![(addr(1003), rtp(0x2222, 1, 1, 97, b"x"))]);
    assert_eq!(rig.fwd.stats().packets_out, 3);
}

/// A 20-byte STUN Binding request without attributes (RFC 8489 §5).
fn binding_request() -> [u8; 20] {
    let mut b = [0u8; 20];
    b[1] = 0x01;
    b[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    b[8..20].copy_from_slice(b"transaction!");
    b
}

/// A complete DTLS 1.2 handshake record with a 1-byte body (RFC 6347 §4.1).
fn dtls_record() -> [u8; 14] {
    [22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
}

#[test]
fn slow_path_gate_limits_per_source_and_per_worker() {
    let mut rig = Rig::new(vec![session(1, Role::Speaker)], vec![]);
    rig.fwd.set_slow_gate(Some(SlowGateRates {
        global: 50,
        per_source: 10,
    }));
    let t0 = Instant::now();
    rig.fwd.set_now(t0);
    // One flooding source: one second of burst, then nothing until its bucket refills.
    for _ in 0..100 {
        let mut b = dtls_record();
        rig.send_raw(addr(9), &mut b, 14);
        rig.slow.clear();
    }
    assert_eq!(rig.fwd.stats().slow_path_up, 10);
    assert_eq!(rig.fwd.stats().dropped(DropReason::RateLimited), 90);
    // Other sources are not starved by it, until the worker's total runs out.
    let many: Vec<SocketAddr> = (0..100u32)
        .map(|i| SocketAddr::from((std::net::Ipv4Addr::from(0xC000_0200 + i), 5000)))
        .collect();
    for a in &many {
        let mut b = dtls_record();
        rig.send_raw(*a, &mut b, 14);
        rig.slow.clear();
    }
    assert_eq!(
        rig.fwd.stats().slow_path_up,
        50,
        "the worker's total: 50 per second"
    );
    // 100 ms later: one more for the first source (10/s), and the total refilled by 5.
    rig.fwd.set_now(t0 + Duration::from_millis(100));
    for _ in 0..5 {
        let mut b = dtls_record();
        rig.send_raw(addr(9), &mut b, 14);
        rig.slow.clear();
    }
    assert_eq!(rig.fwd.stats().slow_path_up, 51);
}

#[test]
fn drops_by_reason() {
    let mut rig = Rig::new(
        vec![session(1, Role::Speaker), session(2, Role::Viewer)],
        vec![route(1, 1, None, 2, Rewrite::default())],
    );
    // Viewer sending media.
    assert!(rig.send(2, &rtp(5, 1, 1, 96, b"v")).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::NotPublisher), 1);
    // Unknown source, RTP and garbage.
    assert!(rig
        .send_from(addr(9), &key(1), &rtp(5, 1, 1, 96, b"u"))
        .is_empty());
    let mut g = [0xFFu8; 20];
    assert!(rig.send_raw(addr(9), &mut g, 20).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::UnknownSource), 2);
    // Known source, garbage first byte.
    assert!(rig.send_raw(addr(1001), &mut g, 20).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::Demux), 1);
    // Forged tag.
    let mut p = rtp(5, 1, 1, 96, b"forged\0\0\0\0");
    let l = p.len();
    assert!(rig.send_raw(addr(1001), &mut p, l).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::AuthFailed), 1);
    // DTLS from anywhere goes to control, addressed by the peer.
    let mut d = dtls_record();
    rig.send_raw(addr(9), &mut d, 14);
    assert_eq!(rig.slow.len(), 1);
    assert_eq!(rig.slow.metas()[0].dst, addr(9));
    // STUN that is no ICE check (no USERNAME, MESSAGE-INTEGRITY, FINGERPRINT) stops in the
    // relay's ICE responder (engine/stun.rs has the checks).
    let mut stun = binding_request();
    rig.send_raw(addr(9), &mut stun, 20);
    assert_eq!(rig.slow.len(), 1);
    assert_eq!(rig.fwd.stats().dropped(DropReason::StunNotCheck), 1);
    // Malformed STUN (no magic cookie, RFC 8489 §5) and DTLS (record overrun) stop here.
    let mut bad = binding_request();
    bad[4] = 0;
    rig.send_raw(addr(9), &mut bad, 20);
    let mut dtls = [0u8; 20];
    dtls[..3].copy_from_slice(&[22, 0xFE, 0xFD]);
    dtls[11..13].copy_from_slice(&500u16.to_be_bytes());
    rig.send_raw(addr(9), &mut dtls, 20);
    assert_eq!(rig.slow.len(), 1);
    assert_eq!(rig.fwd.stats().dropped(DropReason::Malformed), 2);
    // Publisher with no route for nobody: remove the route.
    rig.routes.clear();
    rig.rebuild();
    assert!(rig.send(1, &rtp(5, 1, 1, 96, b"n")).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::NoRoute), 1);
}

#[test]
fn speaker_switch_keeps_numbering() {
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(2, Role::Speaker),
            session(3, Role::Viewer),
        ],
        vec![route(1, 1, None, 3, rw_ssrc(77))],
    );
    let out = rig.send(1, &rtp(10, 1000, 50_000, 96, b"a"));
    assert_eq!(out[0].1, rtp(77, 1000, 50_000, 96, b"a"));
    rig.send(1, &rtp(10, 1001, 51_000, 96, b"a"));
    // Switch: route from 2 replaces route from 1, same output SSRC.
    rig.routes = vec![route(2, 2, None, 3, rw_ssrc(77))];
    rig.rebuild();
    assert!(rig.send(1, &rtp(10, 1002, 52_000, 96, b"a")).is_empty());
    let out = rig.send(2, &rtp(20, 7, 9, 96, b"b"));
    assert_eq!(out[0].1, rtp(77, 1002, 51_001, 96, b"b"));
    let out = rig.send(2, &rtp(20, 8, 909, 96, b"b"));
    assert_eq!(out[0].1, rtp(77, 1003, 51_901, 96, b"b"));
    // A NACK from the viewer for output seq 1003 reaches publisher 2 as its seq 8.
    let mut nack = vec![0x81, 205, 0, 3];
    nack.extend_from_slice(&0xBEEFu32.to_be_bytes());
    nack.extend_from_slice(&77u32.to_be_bytes());
    nack.extend_from_slice(&1003u16.to_be_bytes());
    nack.extend_from_slice(&0u16.to_be_bytes());
    let out = rig.send(3, &nack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(1002));
    assert_eq!(be32(&out[0].1, 8), 20);
    assert_eq!(u16::from_be_bytes([out[0].1[12], out[0].1[13]]), 8);
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn sender_report_down_and_pli_up() {
    let mut rig = Rig::new(
        vec![session(1, Role::Host), session(2, Role::Viewer)],
        vec![route(1, 1, Some(0x1111), 2, rw_ssrc(0x9999))],
    );
    // Establish the stream so the SDES has an output to go to.
    rig.send(1, &rtp(0x1111, 1, 1000, 96, b"m"));
    // SR with one report block + SDES: the SR is replaced by the relay's own (counted), the
    // SDES goes down with the rewritten SSRC.
    let mut c = vec![0x81, 200, 0, 12];
    c.extend_from_slice(&0x1111u32.to_be_bytes());
    c.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // NTP
    c.extend_from_slice(&1000u32.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, 9, 0, 0, 1, 0]);
    c.extend_from_slice(&[0xEE; 24]); // one report block
    c.extend_from_slice(&[0x81, 202, 0, 2]);
    c.extend_from_slice(&0x1111u32.to_be_bytes());
    c.extend_from_slice(&[1, 1, b'a', 0]);
    let out = rig.send(1, &c);
    assert_eq!(out.len(), 1);
    let d = &out[0].1;
    assert_eq!(d.len(), 12);
    assert_eq!(&d[..4], &[0x81, 202, 0, 2]);
    assert_eq!(be32(d, 4), 0x9999);
    assert_eq!(rig.fb(Feedback::SrReplaced), 1);
    // PLI from the viewer about 0x9999 → publisher, media SSRC 0x1111.
    let mut pli = vec![0x81, 206, 0, 2];
    pli.extend_from_slice(&0x5555u32.to_be_bytes());
    pli.extend_from_slice(&0x9999u32.to_be_bytes());
    let mut rr = vec![0x80, 201, 0, 1];
    rr.extend_from_slice(&0x5555u32.to_be_bytes());
    rr.extend_from_slice(&pli);
    let out = rig.send(2, &rr);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(1001));
    assert_eq!(out[0].1.len(), 12);
    assert_eq!(be32(&out[0].1, 8), 0x1111);
    // Sent as the relay's worker, not as the viewer (its SSRC need not be unique).
    assert_eq!(be32(&out[0].1, 4), feedback_ssrc(0));
    // Feedback about an SSRC nobody sent: consumed.
    let mut pli2 = pli.clone();
    pli2[8..12].copy_from_slice(&1u32.to_be_bytes());
    assert!(rig.send(2, &pli2).is_empty());
    assert_eq!(rig.fwd.stats().dropped_total(), 0);
}

#[test]
fn removed_subscriber_and_rekey() {
    let mut rig = Rig::new(
        vec![session(1, Role::Trunk), session(2, Role::Trunk)],
        vec![route(1, 1, None, 2, Rewrite::default())],
    );
    assert_eq!(rig.send(1, &rtp(1, 1, 1, 96, b"a")).len(), 1);
    // New tx key for the subscriber: the next packet uses it.
    rig.sessions[1].tx_key = key(222);
    rig.sessions[1].key_epoch += 1;
    rig.rebuild();
    assert_eq!(rig.send(1, &rtp(1, 2, 1, 96, b"a")).len(), 1);
    rig.sessions.truncate(1);
    let rep = rig.rebuild();
    assert_eq!(rep.skipped_routes, 1);
    assert!(rig.send(1, &rtp(1, 3, 1, 96, b"a")).is_empty());
}

/// RFC 3711 §9.1: two publishers using the same SSRC must not feed one non-rewritten output
/// stream of a subscriber (their packets would be encrypted under the same index).
#[test]
fn same_ssrc_from_two_publishers_second_dropped() {
    for explicit in [None, Some(42)] {
        let mut rig = two_speakers_one_viewer(vec![
            route(1, 1, explicit, 3, Rewrite::default()),
            route(2, 2, explicit, 3, Rewrite::default()),
        ]);
        let out = rig.send(1, &rtp(42, 100, 1000, 96, b"one"));
        assert_eq!(out, vec![(addr(1003), rtp(42, 100, 1000, 96, b"one"))]);
        // Publisher 2 with the same SSRC (and the very same sequence number): refused.
        assert!(rig.send(2, &rtp(42, 100, 7, 96, b"two")).is_empty());
        assert!(rig.send(2, &rtp(42, 101, 8, 96, b"two")).is_empty());
        assert_eq!(rig.fwd.stats().dropped(DropReason::SsrcCollision), 2);
        // The owner is unaffected.
        let out = rig.send(1, &rtp(42, 101, 2000, 96, b"one"));
        assert_eq!(out, vec![(addr(1003), rtp(42, 101, 2000, 96, b"one"))]);
        // Publisher 2's other SSRCs are its own output streams.
        if explicit.is_none() {
            assert_eq!(rig.send(2, &rtp(43, 5, 5, 96, b"two")).len(), 1);
        }
        // A source description of the non-owner does not go down either.
        let mut sr = vec![0x81, 202, 0, 2];
        sr.extend_from_slice(&42u32.to_be_bytes());
        sr.extend_from_slice(&[1, 1, b'a', 0]);
        assert!(rig.send(2, &sr).is_empty());
        assert_eq!(rig.fwd.stats().dropped(DropReason::SsrcCollision), 3);
        assert_eq!(rig.send(1, &sr).len(), 1);
    }
}

/// When the owner's route goes away, another source may take the output stream over, but only
/// after the last index sent: nothing at or behind the fence is encrypted again.
#[test]
fn owner_released_with_its_route() {
    let mut rig = two_speakers_one_viewer(vec![
        route(1, 1, None, 3, Rewrite::default()),
        route(2, 2, None, 3, Rewrite::default()),
    ]);
    rig.send(1, &rtp(42, 500, 1000, 96, b"one"));
    rig.send(1, &rtp(42, 501, 1100, 96, b"one"));
    assert!(rig.send(2, &rtp(42, 900, 1, 96, b"two")).is_empty());
    // Owner 1's route goes away.
    rig.routes.retain(|r| r.from != 1);
    rig.rebuild();
    let sub = &rig.fwd.index().sessions[2];
    assert_eq!(sub.owned[0].owner, OWNER_NONE);
    // Behind the fence (index 501 was used): refused.
    assert!(rig.send(2, &rtp(42, 501, 1, 96, b"two")).is_empty());
    assert!(rig.send(2, &rtp(42, 300, 1, 96, b"two")).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::SsrcCollision), 3);
    // After it: forwarded, and publisher 2 now owns the stream.
    let out = rig.send(2, &rtp(42, 502, 9, 96, b"two"));
    assert_eq!(out, vec![(addr(1003), rtp(42, 502, 9, 96, b"two"))]);
    assert_eq!(rig.fwd.index().sessions[2].owned[0].owner, 2);
    // Publisher 1 coming back (new route) is now the one refused.
    rig.routes.push(route(3, 1, None, 3, Rewrite::default()));
    rig.rebuild();
    assert!(rig.send(1, &rtp(42, 503, 1, 96, b"one")).is_empty());
    // Late packets of the new owner stay behind the fence until it is past the replay
    // window (the inbound replay check refuses anything that old from then on).
    assert!(rig.send(2, &rtp(42, 400, 9, 96, b"two")).is_empty());
    let far = 502 + ContextOptions::default().replay_window as u16 + 1;
    assert_eq!(rig.send(2, &rtp(42, far, 9, 96, b"two")).len(), 1);
    assert_eq!(rig.fwd.index().sessions[2].owned[0].fence, None);
}

/// Rewriting routes keep switching sources inside a worker (continuity), and a
/// non-rewritten source whose SSRC equals the rewritten output SSRC is refused.
#[test]
fn rewritten_stream_owns_its_ssrc() {
    let mut rig = two_speakers_one_viewer(vec![
        route(1, 1, Some(10), 3, rw_ssrc(77)),
        route(2, 2, Some(77), 3, Rewrite::default()),
    ]);
    assert_eq!(rig.send(1, &rtp(10, 1000, 5, 96, b"a")).len(), 1);
    assert!(rig.send(2, &rtp(77, 1001, 5, 96, b"b")).is_empty());
    assert_eq!(rig.fwd.stats().dropped(DropReason::SsrcCollision), 1);
    // Two rewriting sources into one output: both forwarded, renumbered (one stream).
    rig.routes = vec![
        route(1, 1, Some(10), 3, rw_ssrc(77)),
        route(3, 2, Some(20), 3, rw_ssrc(77)),
    ];
    rig.rebuild();
    assert_eq!(
        rig.send(2, &rtp(20, 5, 100, 96, b"b")),
        vec![(addr(1003), rtp(77, 1001, 6, 96, b"b"))]
    );
    assert_eq!(
        rig.send(1, &rtp(10, 1001, 7, 96, b"a")),
        vec![(addr(1003), rtp(77, 1002, 7, 96, b"a"))]
    );
}

/// A rewritten stream that takes over an SSRC a non-rewritten source used continues after
/// the last sequence number sent, instead of passing its source's numbering through.
#[test]
fn rewrite_takes_over_after_last_index() {
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(2, Role::Speaker),
            session(3, Role::Viewer),
        ],
        vec![route(1, 1, None, 3, Rewrite::default())],
    );
    rig.send(1, &rtp(77, 4000, 50, 96, b"a"));
    rig.routes = vec![route(2, 2, None, 3, rw_ssrc(77))];
    rig.rebuild();
    assert_eq!(
        rig.send(2, &rtp(20, 12, 900, 96, b"b")),
        vec![(addr(1003), rtp(77, 4001, 51, 96, b"b"))]
    );
    // And back: the non-rewritten source must continue after 4001.
    rig.routes = vec![route(3, 1, None, 3, Rewrite::default())];
    rig.rebuild();
    assert!(rig.send(1, &rtp(77, 4001, 60, 96, b"a")).is_empty());
    assert_eq!(rig.send(1, &rtp(77, 4002, 60, 96, b"a")).len(), 1);
}

// ---- Loss recovery: NACK answered from the cache, gaps asked upstream, hand-over. ----

use super::hub::FeedbackHub;
use contract::shm::Feedback;
use contract::wire::rtcp_write;

fn nack_rig(routes: Vec<RouteRecord>) -> (Rig, Instant) {
    let mut rig = two_speakers_one_viewer(routes);
    rig.fwd.set_nack(NackConfig::default());
    let t = Instant::now();
    rig.fwd.set_now(t);
    (rig, t)
}

pub(super) fn nack(media: u32, lost: &[u16]) -> Vec<u8> {
    let mut b = [0u8; 256];
    let (n, rest) = rtcp_write::nack(&mut b, 0x5555, media, lost).unwrap();
    assert_eq!(rest, 0);
    b[..n].to_vec()
}

fn pli(media: u32) -> Vec<u8> {
    let mut b = [0u8; 12];
    let n = rtcp_write::pli(&mut b, 0x5555, media).unwrap();
    b[..n].to_vec()
}

impl Rig {
    /// Run the turn's timers and hand-overs at `now`; what they sent.
    pub(super) fn poll(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        self.tx.clear();
        self.fwd.poll(now, &mut self.tx);
        self.opened()
    }
    fn opened(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        (0..self.tx.len())
            .map(|i| {
                let dst = self.tx.metas()[i].dst;
                let s = self.sessions.iter().find(|s| s.peer == dst).unwrap();
                let mut d = self.tx.datagram(i).to_vec();
                let l = d.len();
                let n = TagCipher {
                    key: s.tx_key,
                    rocs: Vec::new(),
                }
                .open(&mut d, l)
                .unwrap();
                d.truncate(n);
                (dst, d)
            })
            .collect()
    }
    fn fb(&self, f: Feedback) -> u64 {
        self.fwd.stats().feedback(f)
    }
}

/// The relay answers a viewer's NACK from its cache with the very packet the viewer was sent
/// (rewritten SSRC, sequence number and timestamp; across a sequence-number wrap), not twice
/// within one round trip, and the publisher hears nothing about it.
#[test]
fn nack_answered_from_the_cache_as_first_sent() {
    for rw in [Rewrite::default(), rw_ssrc(0xAAAA)] {
        let (mut rig, t) = nack_rig(vec![route(1, 1, None, 3, rw)]);
        let mut sent = Vec::new();
        for seq in 65_530u16..=65_535 {
            sent.extend(rig.send(1, &rtp(0x1111, seq, u32::from(seq) * 10, 96, b"pay")));
        }
        for seq in 0u16..4 {
            sent.extend(rig.send(1, &rtp(0x1111, seq, 700_000 + u32::from(seq), 96, b"p")));
        }
        assert_eq!(sent.len(), 10);
        let out_ssrc = rw.ssrc.unwrap_or(0x1111);
        // The viewer lost its 3rd and 8th packets (one before, one after the wrap).
        let lost = [be16(&sent[2].1, 2), be16(&sent[7].1, 2)];
        let out = rig.send(3, &nack(out_ssrc, &lost));
        assert_eq!(out.len(), 2, "{rw:?}");
        assert_eq!(out[0], sent[2]);
        assert_eq!(out[1], sent[7]);
        assert_eq!(rig.fb(Feedback::NackReceived), 2);
        assert_eq!(rig.fb(Feedback::Retransmitted), 2);
        // Again within one round trip: suppressed.
        rig.fwd.set_now(t + Duration::from_millis(50));
        assert!(rig.send(3, &nack(out_ssrc, &lost[..1])).is_empty());
        assert_eq!(rig.fb(Feedback::ResendSuppressed), 1);
        // After it: resent again.
        rig.fwd.set_now(t + Duration::from_millis(150));
        assert_eq!(
            rig.send(3, &nack(out_ssrc, &lost[..1])),
            vec![sent[2].clone()]
        );
        // Nothing went to the publisher, now or at the next turn.
        assert!(rig.poll(t + Duration::from_millis(150)).is_empty());
        assert_eq!(rig.fb(Feedback::NackUpstream), 0);
        // Past the age limit: a cache miss.
        rig.fwd.set_now(t + Duration::from_secs(3));
        assert!(rig.send(3, &nack(out_ssrc, &lost[1..])).is_empty());
        assert_eq!(rig.fb(Feedback::CacheMiss), 1);
        assert_eq!(rig.fwd.stats().dropped_total(), 0);
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A gap in a publisher's stream is NACKed by the relay once per round trip, for a bounded
/// number of tries; viewers missing the same packet add no NACK of their own; the repaired
/// packet is forwarded with its original numbering.
#[test]
fn gaps_are_asked_upstream_once_for_all_viewers() {
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(3, Role::Viewer),
            session(4, Role::Viewer),
        ],
        vec![
            route(1, 1, None, 3, Rewrite::default()),
            route(2, 1, None, 4, Rewrite::default()),
        ],
    );
    rig.fwd.set_nack(NackConfig::default());
    let t = Instant::now();
    rig.fwd.set_now(t);
    for seq in [10u16, 11, 13, 14] {
        assert_eq!(rig.send(1, &rtp(0x1111, seq, 0, 96, b"x")).len(), 2);
    }
    // Both viewers NACK 12 before the turn ends: no resend (not cached), no extra request.
    assert!(rig.send(3, &nack(0x1111, &[12])).is_empty());
    assert!(rig.send(4, &nack(0x1111, &[12])).is_empty());
    let out = rig.poll(t);
    assert_eq!(out.len(), 1, "one NACK to the publisher");
    assert_eq!(out[0].0, addr(1001));
    let p = &out[0].1;
    assert_eq!((p[0] & 0x1F, p[1]), (fmt::NACK, packet_type::RTPFB));
    assert_eq!(be32(p, 4), feedback_ssrc(0));
    assert_eq!(be32(p, 8), 0x1111);
    assert_eq!((be16(p, 12), be16(p, 14)), (12, 0));
    assert_eq!(rig.fb(Feedback::NackUpstream), 1);
    assert_eq!(rig.fb(Feedback::CacheMiss), 2);
    // Not again within the round trip; again after it.
    assert!(rig.poll(t + Duration::from_millis(50)).is_empty());
    assert_eq!(rig.poll(t + Duration::from_millis(100)).len(), 1);
    // The repair arrives: forwarded as 12 to both, and no more NACKs for it.
    let out = rig.send(1, &rtp(0x1111, 12, 0, 96, b"x"));
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(_, d)| be16(d, 2) == 12));
    assert!(rig.poll(t + Duration::from_millis(300)).is_empty());
    // A packet that never comes: asked `retries` (3) times, then given up.
    rig.send(1, &rtp(0x1111, 16, 0, 96, b"x"));
    for i in 0..3u64 {
        assert_eq!(rig.poll(t + Duration::from_millis(400 + 100 * i)).len(), 1);
    }
    assert!(rig.poll(t + Duration::from_millis(800)).is_empty());
    assert_eq!(rig.fb(Feedback::UpstreamGiveUp), 1);
    assert_eq!(rig.fb(Feedback::NackUpstream), 2 + 3);
}

/// Key-frame requests from several viewers for one stream reach the publisher once per
/// interval.
#[test]
fn key_frame_requests_are_aggregated() {
    let (mut rig, t) = nack_rig(vec![route(1, 1, None, 3, Rewrite::default())]);
    rig.send(1, &rtp(0x1111, 1, 0, 96, b"x"));
    assert_eq!(rig.send(3, &pli(0x1111)).len(), 1);
    assert!(rig.send(3, &pli(0x1111)).is_empty());
    assert_eq!(rig.fb(Feedback::PliAggregated), 1);
    rig.fwd.set_now(t + Duration::from_millis(250));
    assert_eq!(rig.send(3, &pli(0x1111)).len(), 1);
}

/// Two workers: the publisher's packets arrive on worker 0, the viewer's feedback on the
/// other. Feedback about an any-SSRC route (which worker 1 cannot place: it never saw the
/// publisher's SSRCs) is handed to worker 0, which answers NACKs from its cache and
/// forwards PLIs; nothing is dropped uncounted.
#[test]
fn feedback_crosses_workers() {
    let sessions = vec![session(1, Role::Speaker), session(3, Role::Viewer)];
    let routes = vec![route(1, 1, None, 3, Rewrite::default())];
    let hub = Arc::new(FeedbackHub::new(2));
    let t = Instant::now();
    let mut w: Vec<Rig> = (0..2)
        .map(|i| {
            let mut r = Rig::new(sessions.clone(), routes.clone());
            r.fwd.set_nack(NackConfig {
                pli_interval: Duration::ZERO,
                ..NackConfig::default()
            });
            r.fwd.attach_hub(hub.clone(), i);
            r.fwd.set_now(t);
            r
        })
        .collect();
    let mut sent = Vec::new();
    for seq in 1u16..=5 {
        sent.extend(w[0].send(1, &rtp(0x1111, seq, 0, 96, b"m")));
    }
    assert_eq!(hub.owner(1), Some(0));
    // 50 PLIs on worker 1: each handed over, each reaches the publisher from worker 0.
    let mut up = 0;
    for _ in 0..50 {
        assert!(w[1].send(3, &pli(0x1111)).is_empty());
        up += w[0]
            .poll(t)
            .iter()
            .filter(|(dst, d)| *dst == addr(1001) && be32(d, 8) == 0x1111)
            .count();
    }
    assert_eq!(up, 50);
    assert_eq!(w[1].fb(Feedback::HandedOver), 50);
    // A NACK on worker 1, answered by worker 0 from its cache.
    assert!(w[1].send(3, &nack(0x1111, &[3])).is_empty());
    let out = w[0].poll(t);
    assert_eq!(out, vec![sent[2].clone()]);
    assert_eq!(w[0].fb(Feedback::Retransmitted), 1);
    assert_eq!(
        w[1].fb(Feedback::Unroutable) + w[0].fb(Feedback::Unroutable),
        0
    );
    // A full inbox is counted, not silent.
    for _ in 0..super::hub::INBOX + 3 {
        w[1].send(3, &pli(0x1111));
    }
    assert_eq!(w[1].fb(Feedback::HandOverFull), 3);
}

/// A route with an RTX output answers NACKs with RFC 4588 RTX: the subscriber's RTX SSRC and
/// payload type, its own sequence numbers, the original sequence number first in the payload;
/// unwrapped, it is the packet first sent.
#[test]
fn nack_answered_as_rtx_on_routes_with_rtx() {
    use contract::shm::RtxOut;
    use contract::wire::rtx;
    let rw = Rewrite {
        ssrc: Some(0xAAAA),
        rtx: Some(RtxOut {
            payload_type: 97,
            ssrc: 0xBBBB,
        }),
        ..Rewrite::default()
    };
    let (mut rig, _) = nack_rig(vec![route(1, 1, Some(0x1111), 3, rw)]);
    let mut sent = Vec::new();
    for seq in 100u16..110 {
        sent.extend(rig.send(1, &rtp(0x1111, seq, 9000 + u32::from(seq), 96, b"media")));
    }
    let lost = [be16(&sent[1].1, 2), be16(&sent[4].1, 2)];
    let out = rig.send(3, &nack(0xAAAA, &lost));
    assert_eq!(out.len(), 2);
    for (i, (k, (dst, d))) in [1usize, 4].iter().zip(&out).enumerate() {
        assert_eq!(*dst, sent[*k].0);
        assert_eq!(d[1] & 0x7F, 97);
        assert_eq!(be32(d, 8), 0xBBBB);
        assert_eq!(be16(d, 2), 1 + i as u16, "the RTX stream's own numbering");
        let mut orig = [0u8; 256];
        let (n, osn) = rtx::decapsulate(d, 96, 0xAAAA, &mut orig).unwrap();
        assert_eq!(osn, lost[i]);
        assert_eq!(&orig[..n], &sent[*k].1[..]);
    }
    assert_eq!(rig.fb(Feedback::RtxSent), 2);
    assert_eq!(rig.fb(Feedback::Retransmitted), 0);
}

/// A NACK costs a few bytes and a resend a whole packet: one subscriber gets at most one
/// cache's worth of resends per second, the rest counted `resend_suppressed`.
#[test]
fn resends_per_subscriber_are_bounded() {
    let mut rig = two_speakers_one_viewer(vec![route(1, 1, None, 3, Rewrite::default())]);
    rig.fwd.set_nack(NackConfig {
        cache_packets: 16,
        ..NackConfig::default()
    });
    let t = Instant::now();
    rig.fwd.set_now(t);
    for seq in 0u16..20 {
        rig.send(1, &rtp(0x1111, seq, 0, 96, b"x"));
    }
    let all: Vec<u16> = (0..20).collect();
    let out = rig.send(3, &nack(0x1111, &all));
    assert_eq!(rig.fb(Feedback::NackReceived), 20);
    assert_eq!(rig.fb(Feedback::ResendSuppressed), 4);
    assert_eq!(
        rig.fb(Feedback::Retransmitted) + rig.fb(Feedback::CacheMiss),
        16
    );
    assert_eq!(out.len() as u64, rig.fb(Feedback::Retransmitted));
    // A second later the budget is back.
    rig.fwd.set_now(t + Duration::from_secs(1));
    assert_eq!(rig.send(3, &nack(0x1111, &[19])).len(), 1);
}

/// An RTP packet with a one-byte extension block (RFC 8285 §4.2) holding `elements`.
/// A subscriber route numbered with the transport-wide extension (the publisher's id 3, the
/// subscriber's 5), with RTX when `rtx`, and three packets sent through it, each carrying
/// publisher number 4000 + its sequence number: the rig and the copies sent.
fn twcc_route_sent(rtx: Option<contract::shm::RtxOut>) -> (Rig, Vec<(SocketAddr, Vec<u8>)>) {
    let mut ext_map = [(0u8, 0u8); MAX_MAPPINGS];
    ext_map[0] = (3, 5);
    let rw = Rewrite {
        ssrc: Some(0xAAAA),
        rtx,
        ext_map,
        ext_map_len: 1,
        twcc_id: 5,
        ..Rewrite::default()
    };
    let (mut rig, _) = nack_rig(vec![route(1, 1, Some(0x1111), 3, rw)]);
    let mut sent = Vec::new();
    for seq in 100u16..103 {
        let publisher_tw = (4000 + seq).to_be_bytes();
        let p = rtp_with_extensions(0x1111, seq, &[(3, &publisher_tw)], b"media");
        sent.extend(rig.send(1, &p));
    }
    (rig, sent)
}

/// The transport-wide number (the subscriber's id 5) of RTP packet `p`.
fn tw5(p: &[u8]) -> u16 {
    use contract::wire::{rtp::RtpPacket, twcc};
    let r = RtpPacket::parse(p).unwrap();
    twcc::read_seq(r.extension_by_id(5).unwrap()).unwrap()
}

/// A resend on the stream itself (a subscriber without RTX) has the first copy's SRTP index,
/// so it must be the first copy's plaintext too (RFC 3711 §9.1: never two plaintexts under
/// one keystream): it carries the transport-wide number the first copy carried, not the
/// publisher's from the cache nor a new one, and is byte for byte the first copy.
#[test]
fn plain_resend_is_the_first_copy_with_its_transport_wide_number() {
    let (mut rig, sent) = twcc_route_sent(None);
    let tw = tw5;
    assert_eq!(
        sent.iter().map(|(_, p)| tw(p)).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let out = rig.send(3, &nack(0xAAAA, &[be16(&sent[1].1, 2)]));
    assert_eq!(out.len(), 1);
    assert_eq!(tw(&out[0].1), 1, "the first copy's number");
    assert_eq!(out[0], sent[1], "the first copy, byte for byte");
    assert_eq!(rig.fb(Feedback::Retransmitted), 1);
}

/// An RTX resend to a subscriber numbered with the transport-wide extension takes the
/// subscriber's next number (and counts in its estimator, bwe.rs), as libwebrtc numbers
/// retransmissions: the publisher's number in the cached packet never reaches the subscriber,
/// whose feedback would otherwise cover a range the relay never sent it.
#[test]
fn rtx_resend_takes_the_next_transport_wide_number() {
    use contract::shm::RtxOut;
    use contract::wire::{rtx, twcc};
    let (mut rig, sent) = twcc_route_sent(Some(RtxOut {
        payload_type: 97,
        ssrc: 0xBBBB,
    }));
    let tw = tw5;
    let first: Vec<u16> = sent.iter().map(|(_, p)| tw(p)).collect();
    assert_eq!(first, [0, 1, 2], "the subscriber's own numbering");
    let out = rig.send(3, &nack(0xAAAA, &[be16(&sent[1].1, 2)]));
    assert_eq!(out.len(), 1);
    let d = &out[0].1;
    assert_eq!(be32(d, 8), 0xBBBB);
    assert_eq!(
        tw(d),
        3,
        "the next number, not the publisher's 4101 nor the first copy's 1"
    );
    let mut orig = [0u8; 256];
    let (n, _) = rtx::decapsulate(d, 96, 0xAAAA, &mut orig).unwrap();
    assert_eq!(tw(&orig[..n]), 3);
    assert_eq!(rig.fb(Feedback::RtxSent), 1);
    // Chromium names the SSRC of the last packet it got in its transport-cc feedback: here
    // the RTX stream's, which has no upstream. It still reaches the estimator.
    let arrivals: Vec<Option<u64>> = (0..4).map(|k| Some(1_000_000 + k * 5_000)).collect();
    let mut b = [0u8; 128];
    let h = twcc::FeedbackHeader {
        sender_ssrc: 0xFA17_FA17,
        media_ssrc: 0xBBBB,
        base_seq: 0,
        fb_pkt_count: 0,
    };
    let (n, _) = twcc::write_feedback(&mut b, &h, &arrivals).unwrap();
    assert!(rig.send(3, &b[..n]).is_empty());
    assert_eq!(rig.fb(Feedback::Unroutable), 0, "taken, not unroutable");
    assert_eq!(rig.fwd.bwe_feedbacks(3), Some(1));
}

fn rtp_with_extensions(ssrc: u32, seq: u16, elements: &[(u8, &[u8])], payload: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (id, v) in elements {
        block.push((id << 4) | (v.len() as u8 - 1));
        block.extend_from_slice(v);
    }
    while block.len() % 4 != 0 {
        block.push(0);
    }
    let mut p = rtp(ssrc, seq, 90_000, 96, &[]);
    p[0] |= 0x10;
    p.extend_from_slice(&0xBEDEu16.to_be_bytes());
    p.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
    p.extend_from_slice(&block);
    p.extend_from_slice(payload);
    p
}

/// RFC 8843 §15: each viewer receives its own MID value in the MID element (after the id
/// map), whatever its length; other elements and the payload are kept; a viewer route
/// without a MID rewrite gets the publisher's value.
#[test]
fn mid_is_rewritten_per_viewer() {
    let mut ext_map = [(0u8, 0u8); MAX_MAPPINGS];
    ext_map[0] = (4, 9); // MID: publisher id 4 → viewer id 9
    ext_map[1] = (1, 1); // audio level
    let mut long = Rewrite {
        ssrc: Some(0xB0B0),
        ext_map,
        ext_map_len: 2,
        ..Rewrite::default()
    };
    long.set_mid(9, b"video-main");
    let mut short = Rewrite {
        ssrc: Some(0xC0C0),
        ext_map,
        ext_map_len: 2,
        ..Rewrite::default()
    };
    short.set_mid(9, b"0");
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(2, Role::Viewer),
            session(3, Role::Viewer),
            session(4, Role::Viewer),
        ],
        vec![
            route(1, 1, None, 2, long),
            route(2, 1, None, 3, short),
            route(3, 1, None, 4, Rewrite::default()),
        ],
    );
    let sent = rtp_with_extensions(0x1111, 7, &[(1, &[0x7f]), (4, b"12")], b"payload!");
    let out = rig.send(1, &sent);
    assert_eq!(out.len(), 3);
    for (dst, mid, id) in [
        (addr(1002), &b"video-main"[..], 9),
        (addr(1003), &b"0"[..], 9),
        (addr(1004), &b"12"[..], 4),
    ] {
        let (_, p) = out.iter().find(|(d, _)| *d == dst).expect("forwarded");
        let pkt = contract::wire::rtp::RtpPacket::parse(p).unwrap();
        assert_eq!(pkt.extension_by_id(id), Some(mid), "MID for {dst}");
        assert_eq!(pkt.extension_by_id(1), Some(&[0x7f][..]));
        assert_eq!(pkt.payload(), b"payload!");
        assert_eq!(pkt.sequence(), 7);
    }
    // A packet without a MID element goes unchanged apart from the usual rewrite.
    let out = rig.send(1, &rtp_with_extensions(0x1111, 8, &[(1, &[0x10])], b"x"));
    let (_, p) = out.iter().find(|(d, _)| *d == addr(1002)).unwrap();
    let pkt = contract::wire::rtp::RtpPacket::parse(p).unwrap();
    assert_eq!(pkt.extension_by_id(9), None);
    assert_eq!(pkt.payload(), b"x");
}

/// A NACKed packet whose MID was rewritten is resent byte for byte as first sent: the same
/// SRTP index must never cover two different plaintexts (RFC 3711 §9.1).
#[test]
fn resend_carries_the_rewritten_mid() {
    let mut ext_map = [(0u8, 0u8); MAX_MAPPINGS];
    ext_map[0] = (4, 9);
    let mut rw = Rewrite {
        ssrc: Some(0xB0B0),
        ext_map,
        ext_map_len: 1,
        ..Rewrite::default()
    };
    rw.set_mid(9, b"video-main");
    let (mut rig, _) = nack_rig(vec![route(1, 1, None, 3, rw)]);
    let sent = rig.send(1, &rtp_with_extensions(0x1111, 40, &[(4, b"1")], b"frame"));
    assert_eq!(sent.len(), 1);
    let again = rig.send(3, &nack(0xB0B0, &[40]));
    assert_eq!(again, sent);
}

fn fir(media: u32, seq_nr: u8) -> Vec<u8> {
    let mut b = [0u8; 20];
    let e = contract::wire::rtcp::FirEntry {
        ssrc: media,
        seq_nr,
    };
    let n = rtcp_write::fir(&mut b, 0x5555, &[e]).unwrap();
    b[..n].to_vec()
}

/// What a keyframe request reached the publisher as: `("pli", media SSRC)` or
/// `("fir", (entry SSRC, command sequence number))`.
fn key_request_seen(out: &[(SocketAddr, Vec<u8>)]) -> Vec<(&'static str, u32, u8)> {
    out.iter()
        .filter(|(d, _)| *d == addr(1001))
        .map(|(_, p)| {
            let (pkt, _) = contract::wire::rtcp::RtcpPacket::parse(p).unwrap();
            match pkt.typed().unwrap() {
                contract::wire::rtcp::Rtcp::Pli(_) => ("pli", pkt.feedback_target(), 0),
                contract::wire::rtcp::Rtcp::Fir(_) => ("fir", pkt.feedback_target(), p[16]),
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect()
}

/// RFC 4585 §6.3.1 / RFC 5104 §4.3.1: a viewer's keyframe request reaches the publisher in
/// the kind the publisher negotiated (FIR → PLI for a PLI-only publisher such as aiortc, PLI →
/// FIR for a FIR-only one), with the relay's own FIR numbering, one number per request sent;
/// unknown capabilities pass the kind through.
#[test]
fn keyframe_requests_follow_what_the_publisher_takes() {
    use contract::shm::keyframe::{FIR, PLI};
    for (caps, asked_fir, want) in [
        (PLI, true, "pli"),
        (FIR, false, "fir"),
        (PLI | FIR, true, "fir"),
        (PLI | FIR, false, "pli"),
        (0, true, "fir"),
        (0, false, "pli"),
    ] {
        let rw = Rewrite {
            ssrc: Some(0xAAAA),
            keyframe: caps,
            ..Rewrite::default()
        };
        let (mut rig, t) = nack_rig(vec![route(1, 1, None, 3, rw)]);
        assert_eq!(rig.send(1, &rtp(0x1111, 1, 0, 96, b"k")).len(), 1);
        let req = |fir_req: bool| {
            if fir_req {
                fir(0xAAAA, 77)
            } else {
                pli(0xAAAA)
            }
        };
        let out = rig.send(3, &req(asked_fir));
        let seen = key_request_seen(&out);
        assert_eq!(seen.len(), 1, "caps {caps} fir {asked_fir}: {seen:?}");
        assert_eq!(seen[0].0, want, "caps {caps} fir {asked_fir}");
        assert_eq!(seen[0].1, 0x1111, "the publisher's own SSRC");
        let translated = u64::from((want == "fir") != asked_fir);
        assert_eq!(rig.fb(Feedback::KeyframeTranslated), translated);
        // Aggregated within the interval, whatever the kind.
        rig.fwd.set_now(t + Duration::from_millis(10));
        assert!(key_request_seen(&rig.send(3, &req(!asked_fir))).is_empty());
        assert_eq!(rig.fb(Feedback::PliAggregated), 1);
        // The next request sent as a FIR carries the next command sequence number.
        if want == "fir" {
            assert_eq!(seen[0].2, 0);
            rig.fwd.set_now(t + Duration::from_secs(1));
            let again = key_request_seen(&rig.send(3, &req(asked_fir)));
            assert_eq!(again, vec![("fir", 0x1111, 1)]);
        }
    }
}

/// Transport-wide congestion control towards a viewer: each viewer with the extension
/// negotiated gets its own gap-free transport-wide numbering (the publisher's value is
/// overwritten), a viewer without it gets the packet unchanged; the viewer's transport-cc
/// feedback is consumed by the relay (hop-by-hop: nothing reaches the publisher) and gives
/// it an estimate.
#[test]
fn transport_wide_numbers_per_viewer_and_feedback_gives_an_estimate() {
    let mut ext_map = [(0u8, 0u8); MAX_MAPPINGS];
    ext_map[0] = (3, 5); // transport-wide seq: publisher id 3 → viewer id 5
    let stamped = Rewrite {
        ssrc: Some(0xB0B0),
        ext_map,
        ext_map_len: 1,
        twcc_id: 5,
        ..Rewrite::default()
    };
    let plain = Rewrite {
        ssrc: Some(0xC0C0),
        ..Rewrite::default()
    };
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(2, Role::Viewer),
            session(3, Role::Viewer),
        ],
        vec![route(1, 1, None, 2, stamped), route(2, 1, None, 3, plain)],
    );
    let t0 = Instant::now();
    rig.fwd.set_now(t0);
    assert_eq!(rig.fwd.estimate(2), None, "no packet stamped yet");
    for k in 0..40u16 {
        rig.fwd
            .set_now(t0 + Duration::from_millis(u64::from(k) * 5));
        let pubseq = 1000u16.wrapping_add(k * 7).to_be_bytes();
        let out = rig.send(
            1,
            &rtp_with_extensions(0x1111, k, &[(3, &pubseq)], b"media"),
        );
        assert_eq!(out.len(), 2);
        let (_, p) = out.iter().find(|(d, _)| *d == addr(1002)).unwrap();
        let pkt = contract::wire::rtp::RtpPacket::parse(p).unwrap();
        assert_eq!(
            pkt.extension_by_id(5),
            Some(&k.to_be_bytes()[..]),
            "renumbered"
        );
        assert_eq!(pkt.payload(), b"media");
        let (_, p) = out.iter().find(|(d, _)| *d == addr(1003)).unwrap();
        let pkt = contract::wire::rtp::RtpPacket::parse(p).unwrap();
        assert_eq!(
            pkt.extension_by_id(3),
            Some(&pubseq[..]),
            "not negotiated: unchanged"
        );
    }
    // The viewer reports all 40 arrivals, 5 ms apart.
    let arrivals: Vec<Option<u64>> = (0..40).map(|k| Some(1_000_000 + k * 5_000)).collect();
    let mut b = [0u8; 512];
    let h = twcc::FeedbackHeader {
        sender_ssrc: 0xFA17_FA17,
        media_ssrc: 0xB0B0,
        base_seq: 0,
        fb_pkt_count: 0,
    };
    let (n, covered) = twcc::write_feedback(&mut b, &h, &arrivals).unwrap();
    assert_eq!(covered, 40);
    rig.fwd.set_now(t0 + Duration::from_millis(250));
    let up = rig.send(2, &b[..n]);
    assert!(up.is_empty(), "transport-cc stops at the relay: {up:?}");
    let e = rig.fwd.estimate(2).expect("estimate after feedback");
    assert!(e >= 30_000, "{e}");
    assert_eq!(rig.fwd.estimate(3), None, "viewer without the extension");
}

/// A publisher whose session flags name its transport-wide sequence extension id gets
/// transport-cc feedback about its packets (engine/twcc_rx.rs): one message per feedback
/// interval from the timer path, as this worker's feedback SSRC, arrivals and losses as they
/// happened, each packet reported once; a publisher without the id gets none.
#[test]
fn publishers_get_transport_cc_feedback_about_their_packets() {
    use contract::shm::session_flags;
    use contract::wire::rtcp::{Rtcp, RtcpPacket};
    let mut speaker = session(1, Role::Speaker);
    speaker.flags = session_flags::with_twcc_id(speaker.flags, Some(3));
    let mut rig = Rig::new(
        vec![speaker, session(2, Role::Speaker), session(3, Role::Viewer)],
        vec![
            route(1, 1, None, 3, Rewrite::default()),
            route(2, 2, None, 3, Rewrite::default()),
        ],
    );
    let t0 = Instant::now();
    for k in 0..10u16 {
        rig.fwd
            .set_now(t0 + Duration::from_millis(u64::from(k) * 4));
        if k == 5 {
            continue; // lost on the way in
        }
        let tw = (65533u16).wrapping_add(k).to_be_bytes();
        let p = rtp_with_extensions(0x1111, k, &[(3, &tw)], b"media");
        assert_eq!(rig.send(1, &p).len(), 1);
        let p = rtp_with_extensions(0x2222, k, &[(3, &tw)], b"media");
        assert_eq!(rig.send(2, &p).len(), 1);
    }
    // (destination, sender SSRC, (sequence, arrived) per status, feedback count)
    type Message = (SocketAddr, u32, Vec<(u16, bool)>, u8);
    let feedback = |out: &[(SocketAddr, Vec<u8>)]| -> Vec<Message> {
        out.iter()
            .filter_map(|(d, p)| {
                let (pkt, _) = RtcpPacket::parse(p).ok()?;
                let Ok(Rtcp::TransportCc(fb)) = pkt.typed() else {
                    return None;
                };
                let f = twcc::Feedback::parse(fb.fci()).unwrap();
                let st = f.packets().map(|s| (s.seq, s.delta.is_some())).collect();
                Some((*d, pkt.sender_ssrc().unwrap(), st, f.fb_pkt_count()))
            })
            .collect()
    };
    let out = rig.poll(t0 + Duration::from_millis(100));
    let fb = feedback(&out);
    assert_eq!(
        fb.len(),
        1,
        "one message, to the publisher with the id only: {out:?}"
    );
    let (dst, sender, statuses, count) = &fb[0];
    assert_eq!(*dst, addr(1001));
    assert_eq!(*sender, feedback_ssrc(0));
    assert_eq!(*count, 0);
    let expect: Vec<(u16, bool)> = (0..10u16)
        .map(|k| ((65533u16).wrapping_add(k), k != 5))
        .collect();
    assert_eq!(statuses, &expect, "arrivals and the loss, across the wrap");
    assert_eq!(rig.fwd.stats().feedback(Feedback::TwccSent), 1);
    // Nothing new: no message; the next packet gets the next one.
    assert!(feedback(&rig.poll(t0 + Duration::from_millis(160))).is_empty());
    rig.fwd.set_now(t0 + Duration::from_millis(170));
    let tw = 7u16.to_be_bytes();
    rig.send(1, &rtp_with_extensions(0x1111, 10, &[(3, &tw)], b"media"));
    let fb = feedback(&rig.poll(t0 + Duration::from_millis(230)));
    assert_eq!(fb.len(), 1);
    assert_eq!((fb[0].2.clone(), fb[0].3), (vec![(7, true)], 1));
}

/// A publisher whose session flags name an abs-send-time id (it took REMB, not transport-cc)
/// gets REMB from the relay's receive-side estimate (engine/remb_rx.rs): none before its rate
/// was measured, then periodically, naming the SSRCs that carried the extension, as this
/// worker's feedback SSRC; a publisher that also names a transport-wide id gets transport-cc
/// feedback and no REMB.
#[test]
fn publishers_that_take_remb_get_remb() {
    use contract::shm::session_flags;
    use contract::wire::rtcp::{Rtcp, RtcpPacket};
    let mut remb_only = session(1, Role::Speaker);
    remb_only.flags = session_flags::with_abs_send_time_id(remb_only.flags, Some(2));
    let mut both = session(2, Role::Speaker);
    both.flags = session_flags::with_abs_send_time_id(both.flags, Some(2));
    both.flags = session_flags::with_twcc_id(both.flags, Some(3));
    let mut rig = Rig::new(
        vec![remb_only, both, session(3, Role::Viewer)],
        vec![
            route(1, 1, None, 3, Rewrite::default()),
            route(2, 2, None, 3, Rewrite::default()),
        ],
    );
    // (destination, sender SSRC, bitrate, SSRCs) of each REMB.
    type Message = (SocketAddr, u32, u64, Vec<u32>);
    let rembs = |out: &[(SocketAddr, Vec<u8>)]| -> Vec<Message> {
        out.iter()
            .filter_map(|(d, p)| {
                let (pkt, _) = RtcpPacket::parse(p).ok()?;
                let Ok(Rtcp::Remb(r)) = pkt.typed() else {
                    return None;
                };
                Some((
                    *d,
                    pkt.sender_ssrc().unwrap(),
                    r.bitrate(),
                    r.ssrcs().collect(),
                ))
            })
            .collect()
    };
    let t0 = Instant::now();
    let mut got: Vec<(u64, Message)> = Vec::new();
    let mut twcc_seen = 0;
    // 2 s of 1000-byte packets every 10 ms on two SSRCs, the send clock starting near its
    // 64 s wrap; the feedback tick polled every 50 ms.
    for k in 0..200u64 {
        let at = t0 + Duration::from_millis(k * 10);
        rig.fwd.set_now(at);
        let ast = (((63_500 + k * 10) * 262_144 / 1000) & 0xFF_FFFF) as u32;
        let ast_bytes = ast.to_be_bytes();
        let ast = &ast_bytes[1..];
        let tw = (k as u16).to_be_bytes();
        // Every fourth packet on the second SSRC, each SSRC numbered without gaps.
        let (ssrc, seq) = if k % 4 == 0 {
            (0x1112, k / 4)
        } else {
            (0x1111, k - k / 4 - 1)
        };
        let body = [0u8; 1000];
        let p = rtp_with_extensions(ssrc, seq as u16, &[(2, ast)], &body);
        assert_eq!(rig.send(1, &p).len(), 1);
        let p = rtp_with_extensions(0x2222, k as u16, &[(2, ast), (3, &tw)], &body);
        assert_eq!(rig.send(2, &p).len(), 1);
        if k % 5 == 4 {
            let out = rig.poll(at);
            twcc_seen += out
                .iter()
                .filter(|(_, p)| {
                    RtcpPacket::parse(p)
                        .is_ok_and(|(x, _)| matches!(x.typed(), Ok(Rtcp::TransportCc(_))))
                })
                .count();
            got.extend(rembs(&out).into_iter().map(|m| (k * 10, m)));
        }
    }
    assert!(!got.is_empty(), "no REMB");
    assert!(
        got[0].0 >= 500,
        "the first after the rate is measured: {got:?}"
    );
    for (_, (dst, sender, bps, ssrcs)) in &got {
        assert_eq!(*dst, addr(1001), "only to the REMB-only publisher");
        assert_eq!(*sender, feedback_ssrc(0));
        assert_eq!(ssrcs, &[0x1112, 0x1111]);
        assert!(
            *bps >= 800_000,
            "a clean link: at least what is sent, {bps}"
        );
    }
    assert!(
        (2..=4).contains(&got.len()),
        "one per 500 ms over the last 1.5 s: {got:?}"
    );
    assert_eq!(
        rig.fwd.stats().feedback(Feedback::RembSent),
        got.len() as u64
    );
    assert!(twcc_seen > 0, "the publisher with both got transport-cc");
    // The viewer's own REMB about the REMB-only publisher's stream caps the relay's REMB
    // instead of going on; about the other publisher's stream it goes on as before.
    let at = t0 + Duration::from_millis(2_000);
    rig.fwd.set_now(at);
    let mut b = [0u8; 64];
    let n = twcc::write_remb(&mut b, 0x3333, 300_000, &[0x1111]).unwrap();
    assert!(rig.send(3, &b[..n]).is_empty(), "folded, not passed on");
    assert_eq!(rig.fwd.stats().feedback(Feedback::RembFolded), 1);
    let n = twcc::write_remb(&mut b, 0x3333, 300_000, &[0x2222]).unwrap();
    let up = rig.send(3, &b[..n]);
    assert_eq!(up.len(), 1);
    assert_eq!(
        up[0].0,
        addr(1002),
        "passed on to a publisher without the relay's REMB"
    );
    let r = rembs(&rig.poll(at + Duration::from_millis(50)));
    assert_eq!(r.len(), 1, "the capped REMB at the next tick: {r:?}");
    assert_eq!((r[0].0, r[0].2), (addr(1001), 300_000));
}

/// A publisher's RTX packet (RFC 4588) is unwrapped on the fast path: the hole it fills is no
/// longer asked for, a viewer without RTX gets the original back (original sequence number,
/// SSRC and payload type; across the sequence-number wrap), a viewer with RTX gets it on its
/// RTX stream; padding-only probes and RTX before any original packet are dropped and counted.
#[test]
fn publisher_rtx_is_unwrapped_into_the_original() {
    use contract::shm::RtxOut;
    use contract::wire::rtx;
    let source_rtx = Some(RtxOut {
        payload_type: 97,
        ssrc: 0x2222,
    });
    let plain = Rewrite {
        source_rtx,
        ..Rewrite::default()
    };
    let with_rtx = Rewrite {
        ssrc: Some(0xAAAA),
        rtx: Some(RtxOut {
            payload_type: 99,
            ssrc: 0xBBBB,
        }),
        source_rtx,
        ..Rewrite::default()
    };
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(3, Role::Viewer),
            session(4, Role::Viewer),
        ],
        vec![
            route(1, 1, Some(0x1111), 3, plain),
            route(2, 1, Some(0x1111), 4, with_rtx),
        ],
    );
    rig.fwd.set_nack(NackConfig::default());
    let t = Instant::now();
    rig.fwd.set_now(t);
    let wrap = |orig: &[u8], seq: u16| {
        let mut b = [0u8; 256];
        let h = rtx::RtxHeader {
            payload_type: 97,
            ssrc: 0x2222,
            sequence: seq,
        };
        let n = rtx::encapsulate(orig, h, &mut b).unwrap();
        b[..n].to_vec()
    };
    // RTX before the stream itself: the original payload type is unknown.
    assert!(rig
        .send(1, &wrap(&rtp(0x1111, 65_533, 0, 96, b"early"), 1))
        .is_empty());
    assert_eq!(rig.fb(Feedback::RtxDropped), 1);
    let mut sent = Vec::new();
    for seq in [65_534u16, 65_535, 1, 2] {
        sent.push(rig.send(1, &rtp(0x1111, seq, u32::from(seq), 96, b"media")));
    }
    // 0 is missing: the relay asks for it once.
    let up = rig.poll(t);
    assert_eq!(up.len(), 1);
    assert_eq!((be16(&up[0].1, 12), be16(&up[0].1, 14)), (0, 0));
    // The publisher retransmits 0 on its RTX stream (its own sequence number 7).
    let lost = rtp(0x1111, 0, 0, 96, b"media");
    let out = rig.send(1, &wrap(&lost, 7));
    assert_eq!(out.len(), 2, "{out:?}");
    let to3 = out.iter().find(|(d, _)| *d == addr(1003)).unwrap();
    assert_eq!(to3.1, lost, "viewer 3: the original packet itself");
    let to4 = out.iter().find(|(d, _)| *d == addr(1004)).unwrap();
    assert_eq!((to4.1[1] & 0x7F, be32(&to4.1, 8)), (99, 0xBBBB));
    let mut orig = [0u8; 256];
    let (n, osn) = rtx::decapsulate(&to4.1, 96, 0xAAAA, &mut orig).unwrap();
    // Viewer 4's numbering of source packet 0 follows its numbering of 65_535.
    let prev = be16(
        &sent[1].iter().find(|(d, _)| *d == addr(1004)).unwrap().1,
        2,
    );
    assert_eq!(osn, prev.wrapping_add(1));
    assert_eq!(&orig[12..n], b"media");
    assert_eq!(rig.fb(Feedback::RtxUnwrapped), 1);
    assert_eq!(rig.fb(Feedback::RtxSent), 1);
    // Repaired: not asked for again.
    assert!(rig.poll(t + Duration::from_millis(200)).is_empty());
    // Viewer 3 NACKs 0 later: served from the cache the repair filled.
    assert_eq!(rig.send(3, &nack(0x1111, &[0])), vec![to3.clone()]);
    // A padding-only probe on the RTX stream: dropped, counted.
    let probe = [0xA0, 97, 0, 8, 0, 0, 0, 0, 0, 0, 0x22, 0x22, 0, 0, 0, 4];
    assert!(rig.send(1, &probe).is_empty());
    assert_eq!(rig.fb(Feedback::RtxDropped), 2);
    assert_eq!(rig.fwd.stats().dropped_total(), 0);
}

/// Find the first RTCP packet of type `pt` in a compound.
fn rtcp_of(d: &[u8], pt: u8) -> Option<&[u8]> {
    contract::wire::rtcp::packets(d)
        .filter_map(Result::ok)
        .find(|p| p.packet_type() == pt)
        .map(|p| p.as_bytes())
}

/// The relay's own reports (RFC 3550 §6.4): a receiver report to the publisher with the A.3
/// loss figures and LSR/DLSR from its last SR, and a sender report on the viewer's rewritten
/// stream whose NTP↔RTP mapping is the publisher's, extrapolated to the sending time and
/// shifted by the route's timestamp rewriting, with the stream's own counts; each in a
/// compound with SDES CNAME (the publisher's, for the SR).
#[test]
fn relay_writes_its_own_sender_and_receiver_reports() {
    use contract::wire::rtcp_write::{dlsr, ntp_add, ntp_middle};
    let mut rig = Rig::new(
        vec![session(1, Role::Speaker), session(3, Role::Viewer)],
        vec![route(1, 1, Some(0x1111), 3, rw_ssrc(0xAAAA))],
    );
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // 30 packets of 90 kHz video, 40 ms apart; sequence number 105 lost.
    let mut first_out_ts = None;
    for i in 0..31u32 {
        if i == 5 {
            continue;
        }
        rig.fwd.set_now(ms(40 * u64::from(i)));
        let out = rig.send(
            1,
            &rtp(0x1111, 100 + i as u16, 5000 + 3600 * i, 96, &[7; 100]),
        );
        assert_eq!(out.len(), 1);
        first_out_ts.get_or_insert(be32(&out[0].1, 4));
    }
    let ts_off = first_out_ts.unwrap().wrapping_sub(5000);
    // The publisher's SR (and SDES with its CNAME) at 1240 ms.
    let ntp0 = 0xE1B2_C3D4_8000_0000u64;
    let rtp0: u32 = 5000 + 3600 * 31;
    rig.fwd.set_now(ms(1240));
    let mut c = vec![0x80, 200, 0, 6];
    c.extend_from_slice(&0x1111u32.to_be_bytes());
    c.extend_from_slice(&ntp0.to_be_bytes());
    c.extend_from_slice(&rtp0.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, 30, 0, 0, 0x0B, 0xB8]);
    c.extend_from_slice(&[0x81, 202, 0, 3]);
    c.extend_from_slice(&0x1111u32.to_be_bytes());
    c.extend_from_slice(&[1, 5, b'p', b'u', b'b', b'c', b'n', 0]);
    let down = rig.send(1, &c);
    assert_eq!(down.len(), 1, "only the SDES goes down");
    assert_eq!(down[0].1[1], 202);
    assert_eq!(rig.fb(Feedback::SrReplaced), 1);

    // 500 ms after the SR: the receiver report (due 1 s after the first packet) goes out.
    let out = rig.poll(ms(1740));
    let rr: Vec<_> = out.iter().filter(|(d, _)| *d == addr(1001)).collect();
    assert_eq!(rr.len(), 1, "{out:?}");
    let p = rtcp_of(&rr[0].1, 201).expect("RR first");
    assert_eq!(rr[0].1[1], 201, "the compound starts with the RR");
    assert_eq!(p[0] & 0x1F, 1, "one report block");
    assert_eq!(be32(p, 4), feedback_ssrc(0));
    assert_eq!(be32(p, 8), 0x1111);
    // A.1: probation swallows the first packet; 101..=130 expected, 105 missing: 1 of 30.
    assert_eq!(p[12], (256 / 30) as u8, "fraction lost");
    assert_eq!(be32(p, 12) & 0x00FF_FFFF, 1, "cumulative lost");
    assert_eq!(be32(p, 16), 130, "extended highest sequence number");
    assert_eq!(be32(p, 24), ntp_middle(ntp0), "LSR");
    assert_eq!(be32(p, 28), dlsr(Duration::from_millis(500)), "DLSR");
    let sdes = rtcp_of(&rr[0].1, 202).expect("SDES CNAME");
    assert_eq!(&sdes[10..10 + usize::from(sdes[9])], b"sluice-relay");
    assert_eq!(rig.fb(Feedback::RrSent), 1);

    // The viewer's stream gets its first SR within a quarter interval of that walk.
    let out = rig.poll(ms(2140));
    let sr: Vec<_> = out.iter().filter(|(d, _)| *d == addr(1003)).collect();
    assert_eq!(sr.len(), 1, "{out:?}");
    let p = rtcp_of(&sr[0].1, 200).expect("SR");
    assert_eq!(sr[0].1[1], 200, "the compound starts with the SR");
    assert_eq!(be32(p, 4), 0xAAAA);
    let ntp = (u64::from(be32(p, 8)) << 32) | u64::from(be32(p, 12));
    let d = Duration::from_millis(900);
    assert_eq!(
        ntp,
        ntp_add(ntp0, d),
        "the publisher's NTP clock, 900 ms on"
    );
    assert_eq!(
        be32(p, 16),
        rtp0.wrapping_add(81_000).wrapping_add(ts_off),
        "its RTP clock at the same instant (90 kHz × 0.9 s), through the rewrite"
    );
    assert_eq!(
        (be32(p, 20), be32(p, 24)),
        (30, 3000),
        "the stream's own counts"
    );
    let sdes = rtcp_of(&sr[0].1, 202).expect("SDES CNAME");
    assert_eq!(be32(sdes, 4), 0xAAAA);
    assert_eq!(&sdes[10..15], b"pubcn", "the publisher's CNAME");
    assert_eq!(rig.fb(Feedback::SrSent), 1);
    // Nothing more until the next interval (0.5 s at least).
    assert!(rig.poll(ms(2300)).is_empty());
    let later = rig.poll(ms(4000));
    assert_eq!(later.len(), 2, "one SR and one RR again");
    assert_eq!(rig.fwd.stats().dropped_total(), 0);
}

/// A viewer that joins gets a keyframe soon: the rebuild that gives it a new output makes the
/// publisher's worker send one PLI per video stream (declared by the route's keyframe bits,
/// or a 90 kHz clock), none for audio, none again for outputs that already existed.
#[test]
fn a_viewer_joining_a_video_stream_triggers_a_keyframe_request() {
    use contract::shm::keyframe::PLI;
    let video = Rewrite {
        keyframe: PLI,
        ..Rewrite::default()
    };
    let mut rig = Rig::new(
        vec![
            session(1, Role::Speaker),
            session(3, Role::Viewer),
            session(4, Role::Viewer),
        ],
        vec![
            route(1, 1, Some(0x1111), 3, video),
            route(2, 1, None, 3, Rewrite::default()),
        ],
    );
    let t0 = Instant::now();
    for i in 0..40u32 {
        rig.fwd
            .set_now(t0 + Duration::from_millis(20 * u64::from(i)));
        rig.send(1, &rtp(0x1111, i as u16, 3000 * i, 96, b"v"));
        rig.send(1, &rtp(0x2222, i as u16, 960 * i, 111, b"a"));
        rig.send(1, &rtp(0x3333, i as u16, 1800 * i, 97, b"v"));
    }
    let now = t0 + Duration::from_millis(800);
    assert!(rig
        .poll(now)
        .iter()
        .all(|(d, p)| *d != addr(1001) || p[1] != 206));
    // Viewer 4 joins both routes.
    rig.routes.push(route(3, 1, Some(0x1111), 4, video));
    rig.routes.push(route(4, 1, None, 4, Rewrite::default()));
    rig.rebuild();
    let out = rig.poll(now);
    let mut plis: Vec<u32> = (out.iter())
        .filter(|(d, p)| *d == addr(1001) && p[1] == 206 && p[0] & 0x1F == fmt::PLI)
        .map(|(_, p)| be32(p, 8))
        .collect();
    plis.sort_unstable();
    assert_eq!(plis, [0x1111, 0x3333], "video only");
    assert_eq!(rig.fb(Feedback::PliOnJoin), 2);
    // Nothing changed: no request.
    rig.rebuild();
    assert!(rig.poll(now).iter().all(|(_, p)| p[1] != 206));
    assert_eq!(rig.fb(Feedback::PliOnJoin), 2);
}

/// RTP with one one-byte header extension element `(id, value)` (RFC 8285 §4.2).
fn rtp_with_rid(ssrc: u32, seq: u16, rid: &[u8]) -> Vec<u8> {
    let mut ext = vec![(10 << 4) | (rid.len() as u8 - 1)];
    ext.extend_from_slice(rid);
    while ext.len() % 4 != 0 {
        ext.push(0);
    }
    let mut v = rtp(ssrc, seq, 1, 96, &[]);
    v[0] |= 0x10;
    v.extend_from_slice(&[0xBE, 0xDE]);
    v.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
    v.extend_from_slice(&ext);
    v.extend_from_slice(b"payload");
    v
}

/// A publisher's packet on an SSRC no route carries goes to control as its plain header
/// (stream-up, so control can learn a simulcast layer by RID): once per SSRC per second, for
/// at most STREAM_REPORTS SSRCs per session; without a header extension, from a viewer, or
/// beyond the budget it is only counted as `no_route`.
#[test]
fn unrouted_publisher_streams_are_reported_to_control_within_a_budget() {
    use super::index::{STREAM_REPORTS, STREAM_REPORT_INTERVAL};
    let mut rig = Rig::new(
        vec![session(1, Role::Speaker), session(2, Role::Viewer)],
        vec![route(1, 1, Some(7), 2, Rewrite::default())],
    );
    let t0 = Instant::now();
    rig.fwd.set_now(t0);
    // The routed SSRC is forwarded, not reported.
    assert_eq!(rig.send(1, &rtp_with_rid(7, 1, b"q")).len(), 1);
    assert!(rig.slow.is_empty());
    // An unrouted SSRC with the RID: its plain header goes up, addressed by the publisher.
    let p = rtp_with_rid(0xA1, 1, b"h");
    assert!(rig.send(1, &p).is_empty());
    assert_eq!(rig.slow.len(), 1);
    assert_eq!(rig.slow.metas()[0].dst, addr(1001));
    assert_eq!(rig.slow.datagram(0), &p[..p.len() - b"payload".len()]);
    // Again within the interval: counted only.
    assert!(rig.send(1, &rtp_with_rid(0xA1, 2, b"h")).is_empty());
    assert_eq!(rig.slow.len(), 1);
    // No header extension: nothing to learn from it.
    assert!(rig.send(1, &rtp(0xA2, 1, 1, 96, b"x")).is_empty());
    assert_eq!(rig.slow.len(), 1);
    // A viewer's RTP never goes up.
    assert!(rig.send(2, &rtp_with_rid(0xA3, 1, b"f")).is_empty());
    assert_eq!(rig.slow.len(), 1);
    // Random SSRCs: the budget, then only counted.
    for i in 0..20u32 {
        rig.send(1, &rtp_with_rid(0xB000 + i, 1, b"f"));
    }
    assert_eq!(rig.slow.len(), STREAM_REPORTS);
    // After the interval a reported, still unrouted SSRC is reported again.
    rig.fwd.set_now(t0 + STREAM_REPORT_INTERVAL);
    rig.send(1, &rtp_with_rid(0xA1, 3, b"h"));
    assert_eq!(rig.slow.len(), STREAM_REPORTS + 1);
    assert_eq!(rig.fwd.stats().dropped(DropReason::NoRoute), 24);
}
