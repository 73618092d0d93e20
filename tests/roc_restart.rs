//! The SRTP rollover counter survives a relay crash (RFC 3711 §3.3.1; docs/ENGINE.md "Stream
//! state across restarts"): a stream that starts at sequence number 65000 wraps after 536
//! packets; the relay is killed with SIGKILL after the wrap and restarted. Every packet the
//! publisher sends once the new relay is up must authenticate at the relay (no `auth_failed`
//! drop in the shm counters) and decrypt at the subscriber.
//!
//! Before the per-stream state was persisted in shm, the new relay's contexts started at ROC 0:
//! every later packet failed authentication and forwarding never resumed.

use contract::shm::{DropReason, ShmReader};
use contract::srtp::Profile;
use sluice_tests::procs::Instance;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_SEQ: u16 = 65_000;
const PPS: u32 = 2000;

fn kill9_after_wrap(backend: &str, workers: u32, profile: Profile) {
    let inst = Instance::new("roc-restart", backend, workers, None);
    let _control = inst.start_control();
    let mut relay = inst.spawn_relay(&[]);
    inst.wait_relay(&relay);
    let (mut publisher, mut subscriber) = inst.pair(70, profile);
    let media = inst.media;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let (st, sn) = (stop.clone(), sent.clone());
    // Packet i carries sequence number 65000 + i (mod 2^16) and i in its payload.
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        let mut i = 0u32;
        while !st.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(PPS));
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
            let mut payload = [0u8; 160];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            publisher.send_rtp(
                media,
                0x0C0C_0A0A,
                FIRST_SEQ.wrapping_add(i as u16),
                &payload,
            );
            i += 1;
            sn.store(i, Ordering::Relaxed);
        }
        i
    });
    let st = stop.clone();
    let receiver = std::thread::spawn(move || {
        let mut got = BTreeSet::new();
        let mut undecryptable = 0u32;
        let mut buf = vec![0u8; relay::batch::MAX_DATAGRAM];
        let mut idle: Option<Instant> = None;
        loop {
            match subscriber.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    idle = None;
                    match subscriber.recv.unprotect_rtp(&mut buf, n) {
                        Ok(m) if m >= 16 => {
                            got.insert(u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]));
                        }
                        _ => undecryptable += 1,
                    }
                }
                Err(_) => {
                    if st.load(Ordering::Relaxed) {
                        let t = *idle.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_secs(1) {
                            break;
                        }
                    }
                }
            }
        }
        (got, undecryptable)
    });

    // 0.8 s at 2000 packets/s: about 1600 packets, past the wrap at packet 536 (ROC 1).
    std::thread::sleep(Duration::from_millis(800));
    let before = sent.load(Ordering::Relaxed);
    assert!(before > 1000, "only {before} packets sent before the kill");
    relay.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let relay2 = inst.spawn_relay(&[]);
    inst.wait_relay(&relay2);
    let ready = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let total = sender.join().expect("sender");
    let (got, undecryptable) = receiver.join().expect("receiver");

    let shm = ShmReader::open(&inst.shm).expect("open shm");
    let auth_failed = shm.totals().dropped(DropReason::AuthFailed);
    let after: Vec<u32> = (ready + 2..total).collect();
    let lost: Vec<u32> = after.iter().copied().filter(|i| !got.contains(i)).collect();
    eprintln!(
        "roc restart ({backend}, {workers} workers, {}): sent {total}, {before} before the kill, \
         {} after the new relay was ready; received {}; lost after ready {}; undecryptable {}; \
         auth_failed {auth_failed}",
        profile.name(),
        after.len(),
        got.len(),
        lost.len(),
        undecryptable,
    );
    assert!(
        u32::from(FIRST_SEQ) + before > 1 << 16,
        "the stream wrapped before the kill"
    );
    assert_eq!(auth_failed, 0, "relay log: {}", relay2.log());
    assert_eq!(undecryptable, 0, "the subscriber decrypts everything");
    assert!(
        after.len() > 1000,
        "{} packets after the restart",
        after.len()
    );
    assert!(lost.is_empty(), "lost after the restart: {lost:?}");
    assert!(!relay2.log().contains("ERROR"), "{}", relay2.log());
}

#[test]
fn relay_kill9_after_a_rollover_keeps_authenticating_mmsg() {
    kill9_after_wrap("mmsg", 2, Profile::AeadAes128Gcm);
}

#[test]
fn relay_kill9_after_a_rollover_keeps_authenticating_cm_sha1() {
    kill9_after_wrap("mmsg", 1, Profile::Aes128CmSha1_80);
}
