//! `sluicectl srtp`: offline protect/unprotect through contract::srtp.

mod common;

use common::*;

const PROFILES: [(&str, usize); 6] = [
    ("AES_CM_128_HMAC_SHA1_80", 30),
    ("AES_CM_128_HMAC_SHA1_32", 30),
    ("AES_256_CM_HMAC_SHA1_80", 46),
    ("AES_256_CM_HMAC_SHA1_32", 46),
    ("AEAD_AES_128_GCM", 28),
    ("AEAD_AES_256_GCM", 44),
];

/// RTP: V=2, PT=96, seq 0x1234, ts 0xdecafbad, SSRC 0xcafebabe, 16 bytes of payload.
const RTP: &str = "80601234decafbadcafebabe000102030405060708090a0b0c0d0e0f";
/// RTCP sender report header + SSRC + 16 bytes.
const RTCP: &str = "81c8000bcafebabeabababababababababababababababab";

fn srtp(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let dir = temp_dir("srtp");
    let mut full = vec!["srtp"];
    full.extend_from_slice(args);
    run_stdin(&full, &dir, stdin)
}

fn ok_hex(o: &std::process::Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    let out = stdout(o);
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    out.trim().to_string()
}

#[test]
fn round_trip_every_profile_rtp_and_rtcp() {
    for (profile, len) in PROFILES {
        let key = b64(len, 0x5a);
        for (pkt, rtcp) in [(RTP, false), (RTCP, true)] {
            let mut args = vec!["protect", "--profile", profile, "--key", &key];
            if rtcp {
                args.push("--rtcp");
            }
            args.push(pkt);
            let protected = ok_hex(&srtp(&args, None));
            assert_ne!(protected, pkt, "{profile} rtcp={rtcp}");
            assert!(protected.len() > pkt.len(), "{profile} rtcp={rtcp}");
            // Unprotect, packet from stdin.
            args[0] = "unprotect";
            *args.last_mut().unwrap() = "-";
            let back = ok_hex(&srtp(&args, Some(&protected)));
            assert_eq!(back, pkt, "{profile} rtcp={rtcp}");
            // A flipped bit fails authentication: exit 1.
            let mut bad = protected.into_bytes();
            let i = bad.len() - 1;
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            let o = srtp(&args, Some(std::str::from_utf8(&bad).unwrap()));
            assert_eq!(o.status.code(), Some(1), "{profile} rtcp={rtcp}");
            assert!(
                stderr(&o).contains("authentication failed"),
                "{}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn roc_changes_the_keystream() {
    let key = b64(30, 1);
    let base = [
        "protect",
        "--profile",
        "AES_CM_128_HMAC_SHA1_80",
        "--key",
        &key,
    ];
    let a = ok_hex(&srtp(&[&base[..], &[RTP]].concat(), None));
    let b = ok_hex(&srtp(&[&base[..], &["--roc", "1", RTP]].concat(), None));
    assert_ne!(a, b);
    let back = ok_hex(&srtp(
        &[
            "unprotect",
            "--profile",
            "AES_CM_128_HMAC_SHA1_80",
            "--key",
            &key,
            "--roc",
            "1",
            &b,
        ],
        None,
    ));
    assert_eq!(back, RTP);
}

/// The AES_CM_128_HMAC_SHA1_80 known-answer vector used by libsrtp's test driver
/// (master key e1f97a0d…, salt 0ec675ad…, SSRC 0xcafebabe, seq 0x1234, ROC 0; RFC 3711 §4).
#[test]
fn known_vector_aes_cm_128() {
    use base64::Engine as _;
    let material = validate_hex("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6");
    let key = base64::engine::general_purpose::STANDARD.encode(material);
    let plain = "800f1234decafbadcafebabeabababababababababababababababab";
    let cipher = "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb";
    let p = ["--profile", "AES_CM_128_HMAC_SHA1_80", "--key", &key];
    assert_eq!(
        ok_hex(&srtp(&[&["protect"], &p[..], &[plain]].concat(), None)),
        cipher
    );
    assert_eq!(
        ok_hex(&srtp(&[&["unprotect"], &p[..], &[cipher]].concat(), None)),
        plain
    );
    // The 32-bit tag profile: the same keystream, the tag cut to 4 bytes.
    let p32 = ["--profile", "AES_CM_128_HMAC_SHA1_32", "--key", &key];
    assert_eq!(
        ok_hex(&srtp(&[&["protect"], &p32[..], &[plain]].concat(), None)),
        &cipher[..cipher.len() - 12]
    );
    // SRTCP with index 1 (E flag set).
    let rtcp_plain = "81c8000bcafebabeabababababababababababababababab";
    let rtcp_cipher =
        "81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798";
    assert_eq!(
        ok_hex(&srtp(
            &[&["unprotect", "--rtcp"], &p[..], &[rtcp_cipher]].concat(),
            None
        )),
        rtcp_plain
    );
}

fn validate_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn json_output() {
    let key = b64(28, 9);
    let args = [
        "protect",
        "--profile",
        "AEAD_AES_128_GCM",
        "--key",
        &key,
        RTP,
    ];
    let plain = ok_hex(&srtp(&args, None));
    let dir = temp_dir("srtpjson");
    let o = run_stdin(&[&["--json", "srtp"][..], &args[..]].concat(), &dir, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["hex"], plain.as_str());
    assert_eq!(j["profile"], "AEAD_AES_128_GCM");
}

#[test]
fn usage_errors_exit_2() {
    let k30 = b64(30, 1);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "protect",
                "--profile",
                "AES_CM_128_HMAC_SHA1_80",
                "--key",
                "%%%",
                RTP,
            ],
            "--key: key is not valid base64",
        ),
        (
            vec![
                "protect",
                "--profile",
                "AEAD_AES_128_GCM",
                "--key",
                &k30,
                RTP,
            ],
            "key has 30 bytes but AEAD_AES_128_GCM needs 28",
        ),
        (
            vec!["protect", "--profile", "AES_CM_192", "--key", &k30, RTP],
            "unknown SRTP profile",
        ),
        (
            vec![
                "protect",
                "--profile",
                "AES_CM_128_HMAC_SHA1_80",
                "--key",
                &k30,
                "80zz",
            ],
            "invalid hex digit",
        ),
        (
            vec![
                "protect",
                "--profile",
                "AES_CM_128_HMAC_SHA1_80",
                "--key",
                &k30,
                "801",
            ],
            "odd number of hex digits",
        ),
        (
            vec![
                "protect",
                "--profile",
                "AES_CM_128_HMAC_SHA1_80",
                "--key",
                &k30,
                "0011",
            ],
            "not an RTP/SRTP packet",
        ),
        (
            vec![
                "protect",
                "--profile",
                "AES_CM_128_HMAC_SHA1_80",
                "--key",
                &k30,
                "--rtcp",
                "--roc",
                "1",
                RTCP,
            ],
            "--roc applies to SRTP only",
        ),
    ];
    for (args, needle) in cases {
        let o = srtp(&args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
}
