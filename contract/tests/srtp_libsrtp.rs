//! Cross-check against an independent implementation: libsrtp via the `pylibsrtp` Python
//! package (`contract/tests/peers/libsrtp_peer.py`). For every profile both support, Sluice
//! protects (in place, and out of place as the relay's fan-out does) and libsrtp unprotects, and
//! the other way round, for RTP (several SSRCs, CSRCs, header extensions, a sequence-number wrap
//! so the ROC advances) and RTCP.
//! Without python3 or pylibsrtp the test prints `SKIP: <why>` and passes. `SLUICE_PYTHON` names
//! the interpreter (default `python3`); `scripts/test.sh` points it at a venv with the peers.

#[path = "../../tests/support/skip.rs"]
mod skip;

use contract::srtp::{Context, ContextOptions, MacBatch, MasterKey, Profile};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Write;
use std::process::{Command, Stdio};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/libsrtp_peer.py");

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Profiles the peer supports, or the reason to skip.
fn peer_profiles() -> Result<Vec<Profile>, String> {
    let out = Command::new(python())
        .arg(PEER)
        .arg("--profiles")
        .output()
        .map_err(|e| format!("{} not runnable: {e}", python()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|n| Profile::from_name(n).ok())
        .collect())
}

fn run_peer(profile: Profile, key: &MasterKey, lines: &[String]) -> Vec<String> {
    let mut child = Command::new(python())
        .arg(PEER)
        .arg(profile.name())
        .arg(hex(key.as_bytes()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    // Feed stdin from a thread: the peer answers as it reads, and both pipes are bounded.
    let mut stdin = child.stdin.take().unwrap();
    let input = lines.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "peer failed: {:?}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// RTP packets: two SSRCs, sequence numbers crossing 65535 → 0, random CSRCs, extensions,
/// padding bit and payload sizes (kept under pylibsrtp's 1500-byte buffer).
/// Header length of an RTP packet (RFC 3550 §5.1, §5.3.1).
fn header_len(p: &[u8]) -> usize {
    let mut h = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        h += 4 + 4 * usize::from(u16::from_be_bytes([p[h + 2], p[h + 3]]));
    }
    h
}

fn rtp_packets(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for i in 0..40u32 {
        let ssrc: u32 = if i % 2 == 0 { 0x1122_3344 } else { 0xcafe_babe };
        let seq = 65520u16.wrapping_add((i / 2) as u16);
        let cc = rng.gen_range(0..3u8);
        let ext = rng.gen_bool(0.5);
        let mut p = vec![0x80 | cc | if ext { 0x10 } else { 0 }, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(i * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for _ in 0..cc {
            p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
        }
        if ext {
            let words = rng.gen_range(0..3u16);
            p.extend_from_slice(&[0xbe, 0xde]);
            p.extend_from_slice(&words.to_be_bytes());
            for _ in 0..words * 4 {
                p.push(rng.gen());
            }
        }
        let n = rng.gen_range(0..1200);
        for _ in 0..n {
            p.push(rng.gen());
        }
        v.push(p);
    }
    v
}

fn rtcp_packets(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..10)
        .map(|_| {
            let words = rng.gen_range(1..60u16);
            let mut p = vec![0x80, 200];
            p.extend_from_slice(&words.to_be_bytes());
            p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
            for _ in 0..words * 4 - 4 {
                p.push(rng.gen());
            }
            p
        })
        .collect()
}

#[test]
fn sluice_and_libsrtp_interoperate() {
    let profiles = match peer_profiles() {
        Ok(p) => p,
        Err(why) => {
            skip::skip(format!("libsrtp cross-check: {why}"));
            assert!(
                std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
                "SLUICE_REQUIRE_PEERS is set but the libsrtp peer is missing: {why}"
            );
            return;
        }
    };
    for p in Profile::ALL {
        if !profiles.contains(&p) {
            skip::skip(format!("libsrtp cross-check: pylibsrtp lacks {p}"));
        }
    }
    assert!(!profiles.is_empty(), "pylibsrtp reports no profiles");
    let mut rng = StdRng::seed_from_u64(7714);
    for profile in profiles {
        let mut km = vec![0u8; profile.key_material_len()];
        rng.fill(&mut km[..]);
        let key = MasterKey::new(profile, &km).unwrap();
        let rtp = rtp_packets(&mut rng);
        let rtcp = rtcp_packets(&mut rng);

        // Sluice protects; libsrtp unprotects. Then libsrtp protects the same plaintexts.
        // Every other RTP packet is protected out of place, as the relay's fan-out does: its
        // header and a few payload bytes in the output buffer, the rest read from the plain
        // packet, the HMAC-SHA1 tag from a multi-buffer batch.
        let mut tx = Context::new(key, ContextOptions::default()).unwrap();
        let mut lines = Vec::new();
        let mut batch = MacBatch::new();
        for (i, p) in rtp.iter().enumerate() {
            let mut buf = vec![0u8; p.len() + profile.srtp_overhead()];
            let n = if i % 2 == 0 {
                buf[..p.len()].copy_from_slice(p);
                tx.protect_rtp(&mut buf, p.len()).unwrap()
            } else {
                let split = (header_len(p) + i % 7).min(p.len());
                buf[..split].copy_from_slice(&p[..split]);
                let n = tx
                    .protect_rtp_batched_from(&mut buf, split, &p[split..], 0, &mut batch)
                    .unwrap();
                batch.finish(&mut buf);
                n
            };
            lines.push(format!("unprotect {}", hex(&buf[..n])));
        }
        for p in &rtcp {
            let mut buf = p.clone();
            buf.resize(p.len() + profile.srtcp_overhead(), 0);
            let n = tx.protect_rtcp(&mut buf, p.len()).unwrap();
            lines.push(format!("unprotect_rtcp {}", hex(&buf[..n])));
        }
        for p in &rtp {
            lines.push(format!("protect {}", hex(p)));
        }
        for p in &rtcp {
            lines.push(format!("protect_rtcp {}", hex(p)));
        }
        let out = run_peer(profile, &key, &lines);
        assert_eq!(out.len(), lines.len(), "{profile}: peer answered {out:?}");
        let plains: Vec<&Vec<u8>> = rtp.iter().chain(rtcp.iter()).collect();
        let n = plains.len();
        for (i, plain) in plains.iter().enumerate() {
            assert_eq!(
                out[i],
                hex(plain),
                "{profile}: libsrtp could not unprotect Sluice packet {i}"
            );
        }
        let mut rx = Context::new(key, ContextOptions::default()).unwrap();
        for (i, plain) in plains.iter().enumerate() {
            let mut buf = unhex(&out[n + i]);
            let len = buf.len();
            let got = if i < rtp.len() {
                rx.unprotect_rtp(&mut buf, len)
            } else {
                rx.unprotect_rtcp(&mut buf, len)
            }
            .unwrap_or_else(|e| panic!("{profile}: Sluice rejected libsrtp packet {i}: {e}"));
            assert_eq!(&buf[..got], &plain[..], "{profile}: packet {i}");
        }
        // The wrap happened: both SSRCs are now in ROC 1.
        assert_eq!(rx.roc(0x1122_3344), Some(1), "{profile}");
        eprintln!("libsrtp cross-check: {profile} ok ({n} packets each way)");
    }
}
