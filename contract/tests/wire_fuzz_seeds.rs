//! Seed corpus for the `fuzz/` targets: a handful of valid packets per target, built here with
//! the public API, checked to parse, and compared with the files committed under
//! `fuzz/corpus/<target>/`. Regenerate the files with
//! `SLUICE_WRITE_FUZZ_SEEDS=1 cargo test -p sluice-relay --test wire_fuzz_seeds`.

#[path = "../../tests/support/skip.rs"]
mod skip;

use std::path::PathBuf;

use contract::wire::{classify, dd, dtls, rtcp, rtp, stun, Kind};

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn rtp_header(first: u8, pt: u8, seq: u16) -> Vec<u8> {
    let mut v = vec![first, pt];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    v.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    v
}

fn rtp_seeds() -> Seeds {
    let mut plain = rtp_header(0x80, 0x80 | 96, 1);
    plain.extend_from_slice(&[0x90, 0x90, 0x01, 0x02]);
    let mut csrc_pad = rtp_header(0x80 | 0x20 | 2, 111, 2);
    csrc_pad.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0xF8, 0xFF, 0, 0, 3]);
    let mut one = rtp_header(0x90, 100, 3);
    one.extend_from_slice(&[
        0xBE, 0xDE, 0, 2, 0x10, 0x01, 0x22, 1, 2, 3, 0, 0, 0x61, 0x62,
    ]);
    let mut two = rtp_header(0x90, 100, 4);
    two.extend_from_slice(&[0x10, 0x00, 0, 2, 1, 0, 200, 3, 7, 8, 9, 0, 0x61, 0x62]);
    vec![
        ("plain", plain),
        ("csrc_padding", csrc_pad),
        ("one_byte_ext", one),
        ("two_byte_ext", two),
    ]
}

fn rtcp_pkt(count: u8, pt: u8, words: &[u32], tail: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    body.extend_from_slice(tail);
    let mut v = vec![0x80 | count, pt];
    v.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
    v.extend(body);
    v
}

fn rtcp_seeds() -> Seeds {
    let mut sr_sdes = rtcp_pkt(
        1,
        200,
        &[
            1,
            0xE000_0000,
            0,
            90000,
            10,
            1000,
            2,
            0x0200_0001,
            100,
            5,
            0,
            0,
        ],
        &[],
    );
    sr_sdes.extend(rtcp_pkt(1, 202, &[1], &[1, 3, b'a', b'b', b'c', 0, 0, 0]));
    let mut rr_bye = rtcp_pkt(1, 201, &[1, 2, 0, 100, 5, 0, 0], &[]);
    rr_bye.extend(rtcp_pkt(1, 203, &[1], &[3, b'b', b'y', b'e']));
    vec![
        ("sr_sdes", sr_sdes),
        ("rr_bye", rr_bye),
        ("nack", rtcp_pkt(1, 205, &[1, 2, (100 << 16) | 5], &[])),
        (
            "twcc",
            rtcp_pkt(15, 205, &[1, 2, 0x0001_0002, 0x0300_0000], &[]),
        ),
        ("pli", rtcp_pkt(1, 206, &[1, 2], &[])),
        ("fir", rtcp_pkt(4, 206, &[1, 0, 3, 7 << 24], &[])),
        (
            "remb",
            rtcp_pkt(
                15,
                206,
                &[1, 0],
                &[b'R', b'E', b'M', b'B', 1, 0x0C, 0x03, 0xE8, 0, 0, 0, 3],
            ),
        ),
        ("app", rtcp_pkt(2, 204, &[1], b"TEST\x01\x02\x03\x04")),
    ]
}

const TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

fn stun_seeds() -> Seeds {
    use stun::{message_type, Class, StunWriter, METHOD_BINDING};
    let mut out = Vec::new();
    // RFC 5769 §2.1 request, reproduced by the writer (unit tests check it byte for byte).
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        message_type(METHOD_BINDING, Class::Request),
        &TXID,
    )
    .unwrap();
    w.set_padding_byte(b' ');
    w.software(b"STUN test client").unwrap();
    w.priority(0x6e00_01ff).unwrap();
    w.ice_controlled(0x932f_f9b1_5126_3b36).unwrap();
    w.username(b"evtj:h6vY").unwrap();
    w.message_integrity(PASSWORD).unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    out.push(("rfc5769_request", buf[..n].to_vec()));
    for (name, addr) in [
        ("rfc5769_ipv4_response", "192.0.2.1:32853"),
        (
            "rfc5769_ipv6_response",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let mut buf = [0u8; 256];
        let mut w = StunWriter::new(
            &mut buf,
            message_type(METHOD_BINDING, Class::SuccessResponse),
            &TXID,
        )
        .unwrap();
        w.set_padding_byte(b' ');
        w.software(b"test vector").unwrap();
        w.xor_mapped_address(addr.parse().unwrap()).unwrap();
        w.message_integrity(PASSWORD).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        out.push((name, buf[..n].to_vec()));
    }
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        message_type(METHOD_BINDING, Class::ErrorResponse),
        &[9; 12],
    )
    .unwrap();
    w.error_code(487, "Role Conflict").unwrap();
    w.use_candidate().unwrap();
    w.ice_controlling(7).unwrap();
    w.message_integrity(b"k").unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    out.push(("error_response", buf[..n].to_vec()));
    out
}

fn dtls_record(ct: u8, epoch: u16, seq: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ct, 0xFE, 0xFD];
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, 0, seq]);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn dtls_hs(msg_type: u8, len: u8, off: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![msg_type, 0, 0, len, 0, 0, 0, 0, off, 0, 0, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn dtls_seeds() -> Seeds {
    let hello: Vec<u8> = (0..48u8).collect();
    let mut flight = dtls_record(22, 0, 3, &{
        let mut b = dtls_hs(2, 4, 0, &[0xFE, 0xFD, 0, 0]);
        b.extend(dtls_hs(14, 0, 0, &[]));
        b
    });
    flight.extend(dtls_record(20, 0, 4, &[1]));
    flight.extend(dtls_record(22, 1, 0, &[0x55; 24]));
    vec![
        (
            "client_hello_part1",
            dtls_record(22, 0, 0, &dtls_hs(1, 48, 0, &hello[..32])),
        ),
        (
            "client_hello_part2",
            dtls_record(22, 0, 1, &dtls_hs(1, 48, 32, &hello[32..])),
        ),
        ("server_flight", flight),
    ]
}

fn demux_seeds() -> Seeds {
    vec![
        ("rtp", rtp_seeds()[0].1.clone()),
        ("rtcp", rtcp_seeds()[0].1.clone()),
        ("stun", stun_seeds()[0].1.clone()),
        ("dtls", dtls_seeds()[0].1.clone()),
        ("turn_channel", vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]),
        ("zrtp", vec![0x10, 0x00, 0x00, 0x01]),
    ]
}

/// Dependency Descriptors captured from Chromium sending AV1 L3T3: a key frame's first packet
/// (with the template structure) and packets of the frames after it.
const DD_CAPTURE: [&str; 5] = [
    "c1017280081485214eafffaaaa863cf0430c10c302afc0aaa0063c00430010c002a000a80006000040001d954926e082b04a0941b820ac1282503157f974000ca864330e222222eca8655304224230eca877530077004200ef008601df010d",
    "86017340fc",
    "46017340fc",
    "860173",
    "c30175",
];

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The `dd` target reads a run of (length byte, descriptor).
fn dd_seeds() -> Seeds {
    let run = |parts: &[&str]| -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            let b = hex(p);
            v.push(b.len() as u8);
            v.extend(b);
        }
        v
    };
    vec![
        ("chromium_l3t3", run(&DD_CAPTURE)),
        ("structure_only", run(&DD_CAPTURE[..1])),
    ]
}

fn all_seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("rtp", rtp_seeds()),
        ("rtcp", rtcp_seeds()),
        ("stun", stun_seeds()),
        ("dtls", dtls_seeds()),
        ("demux", demux_seeds()),
        ("dd", dd_seeds()),
    ]
}

#[test]
fn seeds_are_valid() {
    for (name, p) in rtp_seeds() {
        rtp::RtpPacket::parse(&p).unwrap_or_else(|e| panic!("rtp seed {name}: {e}"));
        assert_eq!(classify(&p), Kind::Rtp, "{name}");
    }
    for (name, c) in rtcp_seeds() {
        for p in rtcp::packets(&c) {
            p.and_then(|p| p.typed())
                .unwrap_or_else(|e| panic!("rtcp seed {name}: {e}"));
        }
        assert_eq!(classify(&c), Kind::Rtcp, "{name}");
    }
    for (name, m) in stun_seeds() {
        let msg = stun::StunMessage::parse(&m).unwrap_or_else(|e| panic!("stun seed {name}: {e}"));
        msg.verify_fingerprint().unwrap();
    }
    for (name, d) in dtls_seeds() {
        for r in dtls::records(&d) {
            let r = r.unwrap_or_else(|e| panic!("dtls seed {name}: {e}"));
            if r.epoch == 0 && r.kind() == dtls::ContentType::Handshake {
                for h in r.handshakes() {
                    h.unwrap_or_else(|e| panic!("dtls seed {name}: {e}"));
                }
            }
        }
    }
    let mut known = None;
    for (i, h) in DD_CAPTURE.iter().enumerate() {
        let mut new = dd::Structure::default();
        let f = dd::parse(&hex(h), known.as_ref(), &mut new)
            .unwrap_or_else(|e| panic!("dd seed part {i}: {e}"));
        assert_eq!(f.structure, i == 0);
        if f.structure {
            known = Some(new);
        }
    }
    let kinds: Vec<_> = demux_seeds().iter().map(|(_, d)| classify(d)).collect();
    assert_eq!(
        kinds,
        [
            Kind::Rtp,
            Kind::Rtcp,
            Kind::Stun,
            Kind::Dtls,
            Kind::TurnChannel,
            Kind::Zrtp
        ]
    );
}

#[test]
fn committed_corpus_matches() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = std::env::var_os("SLUICE_WRITE_FUZZ_SEEDS").is_some();
    if !write && !root.is_dir() {
        skip::skip(format!(
            "{} not present (not a full checkout)",
            root.display()
        ));
        return;
    }
    for (target, seeds) in all_seeds() {
        let dir = root.join(target);
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed_{name}"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let on_disk = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e} (regenerate the seeds)", path.display()));
                assert_eq!(on_disk, bytes, "{} is stale", path.display());
            }
        }
    }
}
