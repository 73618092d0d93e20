//! Access tokens: `authorize` arbitrary text as a signed (HS256) token and as a Storm stream
//! token, against a fixed developer key and room, with a room policy chosen by the first byte.
//! Nothing may panic, and a signed token that is granted must be refused when the same
//! application's key is a different secret: the signature, not the claims, is what grants.
#![no_main]
#![deny(unsafe_code)]

use control::webrtc::token::{
    authorize, Credential, DevKey, Intent, Limits, RoomPolicy, Target, TokenKind,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"sluice-fuzz-developer-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let key = DevKey::new("k1", SECRET).expect("valid key");
    let lookup = |app: &str, _kid: Option<&str>| (app == "app1").then(|| key.clone());
    let target = Target {
        app: "app1",
        room: "room1",
        intent: if sel & 1 == 0 {
            Intent::Publish
        } else {
            Intent::Subscribe
        },
    };
    let policy = RoomPolicy {
        allowed_email_domains: if sel & 2 != 0 {
            vec!["example.com".into()]
        } else {
            Vec::new()
        },
        accepted_token_kinds: vec![TokenKind::Signed, TokenKind::Stream],
        stream_password: Some("storm-password".into()),
        stream_timeout_minutes: u32::from(sel >> 4),
        bind_ip: sel & 4 != 0,
    };
    let ip = (sel & 8 != 0).then(|| "198.51.100.9".parse().expect("literal address"));
    let limits = Limits::default();
    if let Ok(g) = authorize(
        Credential::Signed(text),
        lookup,
        NOW,
        ip,
        &target,
        &policy,
        &limits,
    ) {
        // Granted: the token must be exactly one our key signs. Re-verify with a different
        // key: it must fail.
        let other =
            DevKey::new("k1", b"another-developer-secret-0123456789abcdef").expect("valid key");
        let lookup2 = |_: &str, _: Option<&str>| Some(other.clone());
        assert!(authorize(
            Credential::Signed(text),
            lookup2,
            NOW,
            ip,
            &target,
            &policy,
            &limits
        )
        .is_err());
        assert_eq!(g.kind, TokenKind::Signed);
    }
    let _ = authorize(
        Credential::Stream(text),
        lookup,
        NOW,
        ip,
        &target,
        &policy,
        &limits,
    );
});
