//! [`WebRtcDtls`], the slow path's [`DtlsSink`] that runs the DTLS-SRTP handshakes of WebRTC
//! sessions registered in the core's DTLS table ([`crate::core::dtls_state`]).
//!
//! Owns: the handshakes, the nominated-peer → session index fed by ICE events, the handshake
//! bounds (in total, per source IP, deadline), and handing completed keys to a [`KeyBinder`].
//! May not touch: shared memory and the journal (the binder — the core — writes keys), HTTP,
//! the packet fast path. Logs carry session ids only, never peer addresses.
//!
//! A datagram reaches a session's endpoint only when it comes from the address ICE nominated
//! for that session (RFC 8842 §5: DTLS runs over the selected pair), so an off-path source
//! cannot start or disturb a handshake. As DTLS server (our answer says `a=setup:passive`,
//! RFC 5763 §5) the endpoint is created by the first datagram; as client it is created at
//! nomination and sends its ClientHello at once.

use crate::core::dtls_state::RtcTable;
use crate::core::CoreError;
use crate::ice::{IceEvent, SessionId};
use crate::slowpath::{DtlsSink, Outbox};
use crate::webrtc::dtls::{
    Certificate, Dtls, DtlsConfig, DtlsRole, SrtpKeys, State, DEFAULT_SRTP_PROFILES,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation of the table completes before its lock is released: a poisoned lock
    // still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bounds on DTLS work (from `control.dtls_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsLimits {
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    pub handshake_timeout: Duration,
}

impl DtlsLimits {
    pub fn from_config(c: &contract::config::ControlConfig) -> DtlsLimits {
        DtlsLimits {
            max_handshakes: c.dtls_max_handshakes as usize,
            max_handshakes_per_ip: c.dtls_max_handshakes_per_ip as usize,
            handshake_timeout: Duration::from_secs(u64::from(c.dtls_handshake_timeout_secs)),
        }
    }
}

/// Receives completed DTLS-SRTP keys and failures. The core implements it.
pub trait KeyBinder: Send + Sync {
    /// Write the keys into the session (key epoch + 1, PENDING cleared), persist, audit.
    fn set_keys(&self, session: SessionId, keys: &SrtpKeys) -> Result<(), CoreError>;
    /// A handshake failed (audit it; `reason` holds no peer data).
    fn dtls_failed(&self, session: SessionId, reason: &str);
}

enum Outcome {
    Keys(SessionId, SrtpKeys),
    Failed(SessionId, String),
}

/// The slow path's DTLS endpoint for WebRTC sessions.
pub struct WebRtcDtls {
    table: Arc<Mutex<RtcTable>>,
    cert: Arc<Certificate>,
    binder: Arc<dyn KeyBinder>,
    limits: DtlsLimits,
    outcomes: Vec<Outcome>,
    /// DTLS datagrams from not-yet-nominated addresses, kept briefly: a browser may send its
    /// ClientHello (maybe in two datagrams) as soon as a check succeeded, a moment before the
    /// nominating check arrives. Replayed at the next tick if the address gets nominated.
    early: Vec<(Instant, SocketAddr, Vec<u8>)>,
}

/// Most early DTLS datagrams kept, in total.
pub const EARLY_MAX: usize = 64;
/// Most early DTLS datagrams kept per source address (a fragmented ClientHello is two).
pub const EARLY_PER_PEER: usize = 4;
/// How long an early datagram is kept.
pub const EARLY_TTL: Duration = Duration::from_secs(2);

impl WebRtcDtls {
    pub fn new(
        table: Arc<Mutex<RtcTable>>,
        cert: Arc<Certificate>,
        binder: Arc<dyn KeyBinder>,
        limits: DtlsLimits,
    ) -> WebRtcDtls {
        WebRtcDtls {
            table,
            cert,
            binder,
            limits,
            outcomes: Vec::new(),
            early: Vec::new(),
        }
    }

    fn config(&self) -> DtlsConfig {
        DtlsConfig {
            handshake_timeout: self.limits.handshake_timeout,
            ..DtlsConfig::default()
        }
    }

    /// Apply outcomes collected under the table lock, without it (the binder takes
    /// control's state lock; an HTTP thread may hold that while touching the table).
    fn flush(&mut self) {
        for o in self.outcomes.drain(..) {
            match o {
                Outcome::Keys(id, keys) => {
                    if let Err(e) = self.binder.set_keys(id, &keys) {
                        tracing::warn!(session = id, error = %e, "DTLS keys not applied");
                    }
                }
                Outcome::Failed(id, reason) => {
                    tracing::info!(session = id, reason = %reason, "DTLS handshake failed");
                    self.binder.dtls_failed(id, &reason);
                }
            }
        }
    }
}

fn send_all(d: &mut Dtls, peer: SocketAddr, out: &mut Outbox) {
    for t in d.take_transmits() {
        // A full outbox drops the datagram; DTLS retransmission recovers (RFC 6347 §4.2.4).
        let _ = out.push(peer, &t);
    }
}

impl DtlsSink for WebRtcDtls {
    fn datagram(&mut self, now: Instant, peer: SocketAddr, data: &[u8], out: &mut Outbox) -> bool {
        let peer = normalize(peer);
        let cfg = self.config();
        let mut t = lock(&self.table);
        let Some(&id) = t.by_peer.get(&peer) else {
            drop(t);
            // Held for a nomination that may follow; counted as refused only when it is
            // given up (no room, or it expired unused): an alert on the counter then means
            // datagrams from addresses no session ever bound.
            if !self.keep_early(now, peer, data) {
                self.refuse_unknown(1);
            }
            return false;
        };
        let needs_endpoint = t.sessions.get(&id).is_some_and(|e| {
            e.dtls
                .as_ref()
                .is_none_or(|d| matches!(d.state(), State::Failed | State::Closed))
        });
        if needs_endpoint {
            let (total, from_ip) = t.handshaking(contract::wire::transport_addr(peer).ip());
            if total >= self.limits.max_handshakes || from_ip >= self.limits.max_handshakes_per_ip {
                t.counters.refused_cap += 1;
                return false;
            }
            let Some(e) = t.sessions.get(&id) else {
                return false;
            };
            match Dtls::new(
                e.dtls_role,
                &self.cert,
                &DEFAULT_SRTP_PROFILES,
                e.remote_fp.clone(),
                cfg,
                now,
            ) {
                Ok(d) => {
                    t.counters.handshakes_started += 1;
                    if let Some(e) = t.sessions.get_mut(&id) {
                        e.dtls = Some(d);
                    }
                }
                Err(err) => {
                    t.counters.handshakes_failed += 1;
                    drop(t);
                    self.outcomes.push(Outcome::Failed(id, err.to_string()));
                    self.flush();
                    return true;
                }
            }
        }
        let mut result = None;
        if let Some(d) = t.sessions.get_mut(&id).and_then(|e| e.dtls.as_mut()) {
            let r = d.handle_datagram(now, data);
            send_all(d, peer, out);
            result = Some(r);
        }
        match result {
            Some(Ok(Some(keys))) => {
                t.counters.handshakes_completed += 1;
                if let Some(e) = t.sessions.get_mut(&id) {
                    e.keys_ready = true;
                }
                self.outcomes.push(Outcome::Keys(id, keys));
            }
            Some(Err(crate::webrtc::dtls::DtlsError::Malformed(_))) => {}
            Some(Err(err)) => {
                t.counters.handshakes_failed += 1;
                self.outcomes.push(Outcome::Failed(id, err.to_string()));
            }
            Some(Ok(None)) | None => {}
        }
        drop(t);
        self.flush();
        true
    }

    fn timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.replay_early(now, out);
        self.start_clients(now, out);
        let mut t = lock(&self.table);
        let mut failed = Vec::new();
        for (&id, e) in t.sessions.iter_mut() {
            let (Some(d), Some(peer)) = (e.dtls.as_mut(), e.peer) else {
                continue;
            };
            if d.poll_timeout(now).is_some_and(|at| at <= now) {
                if let Err(err) = d.handle_timeout(now) {
                    failed.push((id, err.to_string()));
                }
                send_all(d, peer, out);
            }
        }
        t.counters.handshakes_failed += failed.len() as u64;
        drop(t);
        self.outcomes
            .extend(failed.into_iter().map(|(id, r)| Outcome::Failed(id, r)));
        self.flush();
    }

    fn ice_event(&mut self, ev: &IceEvent) {
        let mut t = lock(&self.table);
        match *ev {
            IceEvent::Nominated { session, peer } => {
                let peer = normalize(peer);
                let Some(e) = t.sessions.get_mut(&session) else {
                    return;
                };
                let old = e.peer.replace(peer);
                if let Some(o) = old {
                    if t.by_peer.get(&o) == Some(&session) {
                        t.by_peer.remove(&o);
                    }
                }
                t.by_peer.insert(peer, session);
            }
            IceEvent::Expired { session } => {
                if let Some(p) = t.sessions.get(&session).and_then(|e| e.peer) {
                    if t.by_peer.get(&p) == Some(&session) {
                        t.by_peer.remove(&p);
                    }
                }
            }
        }
    }
}

impl WebRtcDtls {
    /// Hold a datagram from an address not (yet) bound to a session. False if there was no
    /// room for it.
    fn keep_early(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> bool {
        let before = self.early.len();
        self.early
            .retain(|(at, _, _)| now.saturating_duration_since(*at) < EARLY_TTL);
        let expired = before - self.early.len();
        self.refuse_unknown(expired);
        let from_peer = self.early.iter().filter(|(_, p, _)| *p == peer).count();
        if self.early.len() < EARLY_MAX && from_peer < EARLY_PER_PEER {
            self.early.push((now, peer, data.to_vec()));
            return true;
        }
        false
    }

    /// Count `n` datagrams from unbound addresses as refused for good.
    fn refuse_unknown(&mut self, n: usize) {
        if n > 0 {
            lock(&self.table).counters.unknown_peer += n as u64;
        }
    }

    /// Feed early datagrams whose source has been nominated since; drop stale ones.
    fn replay_early(&mut self, now: Instant, out: &mut Outbox) {
        if self.early.is_empty() {
            return;
        }
        let early = std::mem::take(&mut self.early);
        let mut keep = Vec::new();
        let mut expired = 0usize;
        for (at, peer, data) in early {
            if now.saturating_duration_since(at) >= EARLY_TTL {
                expired += 1;
                continue;
            }
            let known = lock(&self.table).by_peer.contains_key(&peer);
            if known {
                self.datagram(now, peer, &data, out);
            } else {
                keep.push((at, peer, data));
            }
        }
        // `datagram` may have queued newer early datagrams meanwhile; keep both, bounded.
        keep.append(&mut self.early);
        let over = keep.len().saturating_sub(EARLY_MAX);
        keep.truncate(EARLY_MAX);
        self.early = keep;
        self.refuse_unknown(expired + over);
    }

    /// Start client-role handshakes for nominated sessions that have none (called after
    /// ICE events; a server-role endpoint waits for the peer's ClientHello instead).
    pub fn start_clients(&mut self, now: Instant, out: &mut Outbox) {
        let cfg = self.config();
        let mut t = lock(&self.table);
        let ids: Vec<(SessionId, SocketAddr)> = t
            .sessions
            .iter()
            .filter(|(_, e)| e.dtls_role == DtlsRole::Client && e.dtls.is_none())
            .filter_map(|(&id, e)| e.peer.map(|p| (id, p)))
            .collect();
        for (id, peer) in ids {
            let (total, from_ip) = t.handshaking(contract::wire::transport_addr(peer).ip());
            if total >= self.limits.max_handshakes || from_ip >= self.limits.max_handshakes_per_ip {
                t.counters.refused_cap += 1;
                continue;
            }
            let Some(e) = t.sessions.get_mut(&id) else {
                continue;
            };
            match Dtls::new(
                DtlsRole::Client,
                &self.cert,
                &DEFAULT_SRTP_PROFILES,
                e.remote_fp.clone(),
                cfg,
                now,
            ) {
                Ok(mut d) => {
                    send_all(&mut d, peer, out);
                    e.dtls = Some(d);
                    t.counters.handshakes_started += 1;
                }
                Err(err) => {
                    t.counters.handshakes_failed += 1;
                    self.outcomes.push(Outcome::Failed(id, err.to_string()));
                }
            }
        }
        drop(t);
        self.flush();
    }
}

/// IPv4-mapped IPv6 → IPv4, as the ICE agent does, so both index the same address.
use contract::wire::normalize_addr as normalize;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::dtls_state::RtcEntry;
    use std::time::Duration;

    #[derive(Default)]
    struct Binder {
        keys: Mutex<Vec<(SessionId, SrtpKeys)>>,
        failed: Mutex<Vec<SessionId>>,
    }

    impl KeyBinder for Binder {
        fn set_keys(&self, session: SessionId, keys: &SrtpKeys) -> Result<(), CoreError> {
            lock(&self.keys).push((session, *keys));
            Ok(())
        }
        fn dtls_failed(&self, session: SessionId, _reason: &str) {
            lock(&self.failed).push(session);
        }
    }

    struct Rig {
        table: Arc<Mutex<RtcTable>>,
        binder: Arc<Binder>,
        sink: WebRtcDtls,
        ours: Arc<Certificate>,
    }

    /// The browser's side of a handshake with the sink: `role`, certificate `cert`, expecting
    /// our fingerprint.
    fn remote_peer(r: &Rig, role: DtlsRole, cert: &Certificate, t0: Instant) -> Dtls {
        Dtls::new(
            role,
            cert,
            &DEFAULT_SRTP_PROFILES,
            r.ours.fingerprint().clone(),
            DtlsConfig::default(),
            t0,
        )
        .unwrap()
    }

    fn rig(limits: DtlsLimits) -> Rig {
        let table = Arc::new(Mutex::new(RtcTable::default()));
        let binder = Arc::new(Binder::default());
        let ours = Arc::new(Certificate::generate().unwrap());
        let sink = WebRtcDtls::new(table.clone(), ours.clone(), binder.clone(), limits);
        Rig {
            table,
            binder,
            sink,
            ours,
        }
    }

    fn limits() -> DtlsLimits {
        DtlsLimits {
            max_handshakes: 4,
            max_handshakes_per_ip: 1,
            handshake_timeout: Duration::from_secs(15),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    impl Rig {
        /// Register session `id` (our role `role`) for a peer with certificate `cert`, nominated
        /// at `peer`.
        fn add(&mut self, id: SessionId, role: DtlsRole, cert: &Certificate, peer: SocketAddr) {
            lock(&self.table).insert(id, RtcEntry::new(role, cert.fingerprint().clone()));
            self.sink
                .ice_event(&IceEvent::Nominated { session: id, peer });
        }

        /// Exchange datagrams between the sink and `remote` (at `peer`) until quiet; the
        /// sink's first `drop_first` datagrams are lost.
        fn pump(
            &mut self,
            remote: &mut Dtls,
            peer: SocketAddr,
            now: Instant,
            mut drop_first: usize,
        ) -> Option<SrtpKeys> {
            let mut remote_keys = None;
            for _ in 0..50 {
                let mut out = Outbox::default();
                for d in remote.take_transmits() {
                    assert!(self.sink.datagram(now, peer, &d, &mut out));
                }
                let to_remote: Vec<_> = out.drain().collect();
                if to_remote.is_empty() && remote.poll_timeout(now).is_none() {
                    break;
                }
                if to_remote.is_empty() {
                    break;
                }
                for (to, d) in to_remote {
                    assert_eq!(to, peer, "replies go to the nominated peer");
                    if drop_first > 0 {
                        drop_first -= 1;
                        continue;
                    }
                    if let Ok(Some(k)) = remote.handle_datagram(now, &d) {
                        remote_keys = Some(k);
                    }
                }
            }
            remote_keys
        }
    }

    fn check_keys(ours: SrtpKeys, theirs: SrtpKeys) {
        assert_eq!(ours.profile, theirs.profile);
        assert_eq!(ours.rx, theirs.tx);
        assert_eq!(ours.tx, theirs.rx);
    }

    /// Server role (our answer said passive) with ECDSA and RSA peers: keys reach the binder.
    #[test]
    fn server_role_handshakes_with_ecdsa_and_rsa_peers() {
        let now = Instant::now();
        let mut r = rig(limits());
        for (id, cert, peer) in [
            (1, Certificate::generate().unwrap(), addr("192.0.2.1:5000")),
            (
                2,
                Certificate::generate_rsa(2048).unwrap(),
                addr("192.0.2.2:5000"),
            ),
        ] {
            r.add(id, DtlsRole::Server, &cert, peer);
            let mut remote = remote_peer(&r, DtlsRole::Client, &cert, now);
            let theirs = r.pump(&mut remote, peer, now, 0).expect("peer keys");
            let got = lock(&r.binder.keys).last().copied().unwrap();
            assert_eq!(got.0, id);
            check_keys(got.1, theirs);
            assert!(lock(&r.table).keys_ready(id));
        }
        let c = lock(&r.table).counters();
        assert_eq!((c.handshakes_started, c.handshakes_completed), (2, 2));
    }

    /// Datagrams from an address ICE did not nominate are not used; the per-IP cap holds.
    #[test]
    fn unknown_sources_and_caps() {
        let now = Instant::now();
        let mut r = rig(limits());
        let peer_cert = Certificate::generate().unwrap();
        let mut remote = remote_peer(&r, DtlsRole::Client, &peer_cert, now);
        let hello = remote.take_transmits();
        let mut out = Outbox::default();
        assert!(!r
            .sink
            .datagram(now, addr("198.51.100.9:1"), &hello[0], &mut out));
        // Held for a nomination that may still come: not refused yet.
        assert_eq!(lock(&r.table).counters().unknown_peer, 0);
        // Given up once it expires unused: refused then, once.
        r.sink.timeout(now + EARLY_TTL * 2, &mut out);
        assert_eq!(lock(&r.table).counters().unknown_peer, 1);
        r.sink.timeout(now + EARLY_TTL * 4, &mut out);
        assert_eq!(lock(&r.table).counters().unknown_peer, 1);
        // Two sessions nominated from one IP: the second handshake is refused (cap 1).
        r.add(1, DtlsRole::Server, &peer_cert, addr("192.0.2.7:1000"));
        r.add(2, DtlsRole::Server, &peer_cert, addr("192.0.2.7:1001"));
        assert!(r
            .sink
            .datagram(now, addr("192.0.2.7:1000"), &hello[0], &mut out));
        assert!(!out.is_empty(), "ServerHello flight");
        assert!(!r
            .sink
            .datagram(now, addr("192.0.2.7:1001"), &hello[0], &mut out));
        assert_eq!(lock(&r.table).counters().refused_cap, 1);
        // Forgetting the session frees its slot.
        lock(&r.table).remove(1);
        assert!(r
            .sink
            .datagram(now, addr("192.0.2.7:1001"), &hello[0], &mut out));
    }

    /// A ClientHello that arrives just before the nominating check is kept and
    /// answered at the next tick after nomination.
    #[test]
    fn early_client_hello_is_replayed_after_nomination() {
        let now = Instant::now();
        let mut r = rig(limits());
        let peer_cert = Certificate::generate().unwrap();
        let peer = addr("192.0.2.50:4000");
        lock(&r.table).insert(
            3,
            RtcEntry::new(DtlsRole::Server, peer_cert.fingerprint().clone()),
        );
        let mut remote = remote_peer(&r, DtlsRole::Client, &peer_cert, now);
        let mut out = Outbox::default();
        for d in remote.take_transmits() {
            assert!(
                !r.sink.datagram(now, peer, &d, &mut out),
                "not nominated yet"
            );
        }
        r.sink.timeout(now, &mut out);
        assert!(out.is_empty(), "nothing answered before nomination");
        r.sink.ice_event(&IceEvent::Nominated { session: 3, peer });
        r.sink.timeout(now, &mut out);
        let flight: Vec<_> = out.drain().collect();
        assert!(!flight.is_empty(), "ServerHello flight after nomination");
        for (_, d) in flight {
            assert_eq!(remote.handle_datagram(now, &d), Ok(None));
        }
        let theirs = r.pump(&mut remote, peer, now, 0).expect("peer keys");
        let got = lock(&r.binder.keys).first().copied().unwrap();
        check_keys(got.1, theirs);
        // Held and then used: no refusal counted.
        assert_eq!(lock(&r.table).counters().unknown_peer, 0);
        // Stale early datagrams are not kept forever.
        let later = now + EARLY_TTL * 2;
        r.sink
            .datagram(later, addr("192.0.2.51:1"), &[22, 0xfe, 0xfd], &mut out);
        r.sink.timeout(later + EARLY_TTL, &mut out);
        assert!(r.sink.early.is_empty());
        assert_eq!(lock(&r.table).counters().unknown_peer, 1);
    }

    /// Client role (the offer said passive): the ClientHello leaves at the first tick after
    /// nomination; when it is lost, the retransmission timer recovers.
    #[test]
    fn client_role_lost_first_flight_recovers() {
        let t0 = Instant::now();
        let mut r = rig(limits());
        let peer_cert = Certificate::generate().unwrap();
        let peer = addr("[2001:db8::5]:7000");
        r.add(9, DtlsRole::Client, &peer_cert, peer);
        let mut remote = remote_peer(&r, DtlsRole::Server, &peer_cert, t0);
        let mut out = Outbox::default();
        r.sink.timeout(t0, &mut out);
        assert_eq!(out.len(), 1, "ClientHello sent at once");
        out.drain().for_each(drop); // lost
        std::thread::sleep(crate::ffi::dtls_ffi::INITIAL_RETRANSMIT + Duration::from_millis(30));
        let now = Instant::now();
        r.sink.timeout(now, &mut out);
        let again: Vec<_> = out.drain().collect();
        assert_eq!(again.len(), 1, "retransmitted ClientHello");
        let mut theirs = None;
        for (_, d) in again {
            assert_eq!(remote.handle_datagram(now, &d), Ok(None));
        }
        for _ in 0..20 {
            let mut out = Outbox::default();
            for d in remote.take_transmits() {
                r.sink.datagram(now, peer, &d, &mut out);
            }
            if out.is_empty() {
                break;
            }
            for (_, d) in out.drain() {
                match remote.handle_datagram(now, &d) {
                    Ok(Some(k)) => theirs = Some(k),
                    Ok(None) => {}
                    Err(e) => panic!("remote: {e}"),
                }
            }
        }
        let got = lock(&r.binder.keys).first().copied().expect("keys");
        check_keys(got.1, theirs.expect("remote keys"));
    }

    /// A handshake that does not finish by its deadline fails and is reported.
    #[test]
    fn deadline_failure_is_reported() {
        let t0 = Instant::now();
        let mut r = rig(DtlsLimits {
            handshake_timeout: Duration::from_secs(1),
            ..limits()
        });
        let peer_cert = Certificate::generate().unwrap();
        let peer = addr("192.0.2.3:3");
        r.add(4, DtlsRole::Server, &peer_cert, peer);
        let mut remote = remote_peer(&r, DtlsRole::Client, &peer_cert, t0);
        let mut out = Outbox::default();
        for d in remote.take_transmits() {
            r.sink.datagram(t0, peer, &d, &mut out);
        }
        r.sink.timeout(t0 + Duration::from_secs(2), &mut out);
        assert_eq!(*lock(&r.binder.failed), vec![4]);
        assert_eq!(lock(&r.table).counters().handshakes_failed, 1);
        assert!(!lock(&r.table).keys_ready(4));
    }
}
