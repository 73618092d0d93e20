//! Local validation: every bad value exits 2 with a clear message, before any request.

mod common;

use common::*;

/// A fake control that records requests; none should arrive for usage errors.
fn expect_usage(args: &[&str], needle: &str) {
    let fake = FakeControl::start(|_| (500, r#"{"error":"should not be called"}"#.into()));
    let dir = temp_dir("usage");
    let mut full = vec!["--admin", fake.url.as_str(), "--token", "t"];
    full.extend_from_slice(args);
    let o = run(&full, &dir);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(stdout(&o).is_empty());
    assert!(fake.requests().is_empty(), "{args:?} reached the API");
}

fn check(args: Vec<String>, needle: &str) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_usage(&refs, needle);
}

#[test]
fn bad_base64() {
    let good = b64(30, 1);
    check(
        session_add(
            "127.0.0.1:5000",
            "AES_CM_128_HMAC_SHA1_80",
            "not*base64",
            &good,
        ),
        "--rx-key: key is not valid base64",
    );
    check(
        ["rekey", "3", "--tx-key", "@@@@"]
            .map(str::to_string)
            .to_vec(),
        "--tx-key: key is not valid base64",
    );
}

#[test]
fn wrong_key_length_for_profile() {
    let k30 = b64(30, 1);
    check(
        session_add("127.0.0.1:5000", "AEAD_AES_256_GCM", &k30, &k30),
        "key has 30 bytes but AEAD_AES_256_GCM needs 44",
    );
    check(
        ["rekey", "3", "--rx-key", &b64(31, 0)]
            .map(str::to_string)
            .to_vec(),
        "fits no SRTP profile",
    );
}

#[test]
fn unknown_profile() {
    let k = b64(30, 1);
    check(
        session_add("127.0.0.1:5000", "NULL_HMAC_SHA1_80", &k, &k),
        "unknown SRTP profile \"NULL_HMAC_SHA1_80\"; expected one of: AEAD_AES_128_GCM",
    );
}

#[test]
fn bad_peer() {
    let k = b64(30, 1);
    for peer in ["localhost:5000", "127.0.0.1", "1.2.3.4:0", "300.1.1.1:5"] {
        check(
            session_add(peer, "AES_CM_128_HMAC_SHA1_80", &k, &k),
            "--peer",
        );
    }
}

#[test]
fn bad_role_pt_and_rekey_without_keys() {
    let k = b64(28, 1);
    let mut a = session_add("127.0.0.1:5000", "AEAD_AES_128_GCM", &k, &k);
    a.extend(["--role".to_string(), "admin".to_string()]);
    check(a, "unknown role \"admin\"");
    check(
        ["route", "add", "--from", "1", "--to", "2", "--pt", "96-100"]
            .map(str::to_string)
            .to_vec(),
        "--pt: \"96-100\" is not FROM:TO",
    );
    check(
        ["route", "add", "--from", "1", "--to", "2", "--pt", "96:200"]
            .map(str::to_string)
            .to_vec(),
        "payload types 0-127",
    );
    check(
        [
            "route",
            "add",
            "--from",
            "1",
            "--to",
            "2",
            "--rtx-pt",
            "97",
            "--rtx-ssrc",
            "5",
        ]
        .map(str::to_string)
        .to_vec(),
        "RTX needs a single-stream route",
    );
    check(
        ["rekey", "3"].map(str::to_string).to_vec(),
        "give --tx-key, --rx-key or both",
    );
}

#[test]
fn clap_errors_exit_2() {
    // Missing required flag and a non-numeric id are clap's own usage errors.
    check(
        ["session", "add", "--peer", "127.0.0.1:1"]
            .map(str::to_string)
            .to_vec(),
        "--profile",
    );
    check(
        ["session", "del", "abc"].map(str::to_string).to_vec(),
        "abc",
    );
    check(["token", "mint"].map(str::to_string).to_vec(), "token");
}

#[test]
fn bad_admin_url_is_usage() {
    let dir = temp_dir("badurl");
    let o = run(&["--admin", "ftp://x", "--token", "t", "status"], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expected http://HOST:PORT"),
        "{}",
        stderr(&o)
    );
}
