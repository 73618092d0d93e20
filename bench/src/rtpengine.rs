//! An rtpengine target: the same load against rtpengine's userspace SRTP forwarding, so the
//! two relays can be compared in one run.
//!
//! Owns: a small bencode codec, the ng control protocol client (bencode over UDP: `cookie
//! SP dict`, one reply per request, resent on silence) and the SDP offer/answer that makes one
//! rtpengine call per publisher → subscriber pair with SDES keys (RFC 4568). May not touch:
//! media sockets or packets (the generator sends them, as for Sluice).
//!
//! Keys: SDES is declarative, each side announces the key it encrypts with (RFC 4568 §6.1).
//! The publisher's offer carries its `rx_key` (what it encrypts with); rtpengine rewrites the
//! offer with its own key for the subscriber leg, which the subscriber must decrypt with; the
//! subscriber answers with the suite's tag (RFC 4568 §7.1.2) and rtpengine's rewritten answer
//! tells the publisher where to send. rtpengine decrypts and re-encrypts every packet, as
//! Sluice does, so the per-packet work is comparable.
//!
//! Fan-out 1 uses one offer/answer call per publisher → subscriber pair. Fan-out M > 1 uses
//! rtpengine's one-to-many commands (ng protocol `publish`, `subscribe request`, `subscribe
//! answer`, in rtpengine since mr10.x): one call per publisher, which `publish`es a sendonly
//! SDP with its key; each subscriber is a `subscribe request` (rtpengine replies with a
//! sendonly offer carrying the key it will encrypt that copy with) and a `subscribe answer`
//! (the subscriber's recvonly SDP, which starts forwarding). rtpengine then decrypts each
//! publisher packet once and re-encrypts it per subscriber.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use contract::srtp::{MasterKey, Profile};
use rand::RngCore;
use serde_json::Value as Json;

use crate::probe::PAYLOAD_TYPE;
use crate::target::{Plan, Target, TargetError, TargetInfo, Wiring};

/// A bencode value (BitTorrent BEP 3 encoding, as rtpengine's ng protocol uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    /// Keys are kept sorted (bencode requires sorted dictionary keys).
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

/// Why bytes are not bencode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("bencode ends early at byte {0}")]
    Eof(usize),
    #[error("unexpected byte {byte:#04x} at {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bad integer at byte {0}")]
    Int(usize),
    #[error("string length at byte {0} is too large")]
    Length(usize),
    #[error("bencode nests deeper than {MAX_DEPTH}")]
    Depth,
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

const MAX_DEPTH: usize = 32;

impl Bencode {
    /// A byte string from text.
    pub fn str(s: &str) -> Bencode {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from (key, value) pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Bencode)>) -> Bencode {
        Bencode::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// Append the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    out.extend_from_slice(format!("{}:", k.len()).as_bytes());
                    out.extend_from_slice(k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decode exactly one value filling all of `b`.
    pub fn decode(b: &[u8]) -> Result<Bencode, BencodeError> {
        let (v, end) = Self::decode_prefix(b)?;
        if end != b.len() {
            return Err(BencodeError::Trailing(b.len() - end));
        }
        Ok(v)
    }

    /// Decode one value at the start of `b`; returns it and where it ended.
    pub fn decode_prefix(b: &[u8]) -> Result<(Bencode, usize), BencodeError> {
        let mut at = 0;
        let v = Self::parse(b, &mut at, 0)?;
        Ok((v, at))
    }

    fn parse(b: &[u8], at: &mut usize, depth: usize) -> Result<Bencode, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(BencodeError::Depth);
        }
        let c = *b.get(*at).ok_or(BencodeError::Eof(*at))?;
        match c {
            b'i' => {
                let start = *at + 1;
                let end = start
                    + b[start..]
                        .iter()
                        .position(|&x| x == b'e')
                        .ok_or(BencodeError::Eof(b.len()))?;
                let s =
                    std::str::from_utf8(&b[start..end]).map_err(|_| BencodeError::Int(start))?;
                // BEP 3: no leading zeros, no "-0".
                let bad = s.is_empty()
                    || s == "-"
                    || s.starts_with("-0")
                    || (s.len() > 1 && s.starts_with('0'));
                if bad {
                    return Err(BencodeError::Int(start));
                }
                let i = s.parse::<i64>().map_err(|_| BencodeError::Int(start))?;
                *at = end + 1;
                Ok(Bencode::Int(i))
            }
            b'0'..=b'9' => Ok(Bencode::Bytes(Self::bytes(b, at)?)),
            b'l' => {
                *at += 1;
                let mut l = Vec::new();
                loop {
                    match b.get(*at) {
                        None => return Err(BencodeError::Eof(*at)),
                        Some(b'e') => {
                            *at += 1;
                            return Ok(Bencode::List(l));
                        }
                        Some(_) => l.push(Self::parse(b, at, depth + 1)?),
                    }
                }
            }
            b'd' => {
                *at += 1;
                let mut d = BTreeMap::new();
                loop {
                    match b.get(*at) {
                        None => return Err(BencodeError::Eof(*at)),
                        Some(b'e') => {
                            *at += 1;
                            return Ok(Bencode::Dict(d));
                        }
                        Some(b'0'..=b'9') => {
                            let k = Self::bytes(b, at)?;
                            let v = Self::parse(b, at, depth + 1)?;
                            d.insert(k, v);
                        }
                        Some(&byte) => return Err(BencodeError::Unexpected { byte, at: *at }),
                    }
                }
            }
            byte => Err(BencodeError::Unexpected { byte, at: *at }),
        }
    }

    fn bytes(b: &[u8], at: &mut usize) -> Result<Vec<u8>, BencodeError> {
        let start = *at;
        let colon = start
            + b[start..]
                .iter()
                .position(|&x| x == b':')
                .ok_or(BencodeError::Eof(b.len()))?;
        let digits = &b[start..colon];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 9 {
            return Err(BencodeError::Length(start));
        }
        // At most 9 ASCII digits, so this parses and fits.
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BencodeError::Length(start))?;
        let end = colon + 1 + len;
        if end > b.len() {
            return Err(BencodeError::Eof(b.len()));
        }
        *at = end;
        Ok(b[colon + 1..end].to_vec())
    }

    /// The value under `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// A byte string as text (lossy).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Bencode::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// As JSON (byte strings as lossy text), for the report.
    pub fn to_json(&self) -> Json {
        match self {
            Bencode::Int(i) => Json::from(*i),
            Bencode::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
            Bencode::List(l) => Json::Array(l.iter().map(Bencode::to_json).collect()),
            Bencode::Dict(d) => Json::Object(
                d.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// One ng datagram: `cookie SP bencoded-dict`.
pub fn ng_frame(cookie: &str, msg: &Bencode) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(cookie.as_bytes());
    v.push(b' ');
    msg.encode_into(&mut v);
    v
}

/// Split an ng reply into cookie and message.
pub fn ng_parse(b: &[u8]) -> Result<(String, Bencode), BencodeError> {
    let sp = b
        .iter()
        .position(|&x| x == b' ')
        .ok_or(BencodeError::Eof(b.len()))?;
    let cookie = String::from_utf8_lossy(&b[..sp]).into_owned();
    Ok((cookie, Bencode::decode(&b[sp + 1..])?))
}

/// The SDP one bench endpoint announces: one video stream to `peer`, RTP/SAVP with one SDES
/// crypto line (RFC 4568 §9.1) carrying `key` under `tag`, RTCP multiplexed, `sendrecv`.
pub fn endpoint_sdp(peer: SocketAddr, key: &MasterKey, tag: u32, session_id: u64) -> String {
    endpoint_sdp_dir(peer, key, tag, session_id, "sendrecv")
}

/// [`endpoint_sdp`] with another direction attribute (RFC 4566 §6: `sendonly` for a
/// publisher, `recvonly` for a subscriber).
pub fn endpoint_sdp_dir(
    peer: SocketAddr,
    key: &MasterKey,
    tag: u32,
    session_id: u64,
    direction: &str,
) -> String {
    let (fam, ip) = match peer.ip() {
        IpAddr::V4(a) => ("IP4", a.to_string()),
        IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    let mut s = String::with_capacity(512);
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\no=- {session_id} 1 IN {fam} {ip}\r\ns=sluice-bench\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m=video {port} RTP/SAVP {pt}\r\na=rtpmap:{pt} VP8/90000\r\n\
         a=crypto:{tag} {suite} inline:{b64}\r\na=rtcp-mux\r\na={direction}\r\n",
        port = peer.port(),
        pt = PAYLOAD_TYPE,
        suite = key.profile().name(),
        b64 = key.to_base64(),
    );
    s
}

/// What an SDP rewritten by rtpengine tells one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpMedia {
    /// Where to send media (connection address and the first m= line's port).
    pub addr: SocketAddr,
    /// Crypto lines of the first media section: (tag, suite, inline key).
    pub crypto: Vec<(u32, String, String)>,
}

/// Why an SDP from rtpengine was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no m= line")]
    NoMedia,
    #[error("no usable c= line")]
    NoConnection,
    #[error("bad m= line: {0}")]
    BadMedia(String),
}

/// Read the first media section's address and crypto lines (RFC 4566 §5.7, §5.14;
/// RFC 4568 §9.1: `a=crypto:<tag> <suite> inline:<key>[|lifetime][|MKI:len]`).
pub fn parse_sdp(sdp: &str) -> Result<SdpMedia, SdpError> {
    let mut session_c: Option<IpAddr> = None;
    let mut media_c: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut crypto = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if port.is_some() {
                break; // only the first media section
            }
            let p = m
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| SdpError::BadMedia(m.to_string()))?;
            port = Some(p);
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok());
            if port.is_some() {
                media_c = ip.or(media_c);
            } else {
                session_c = ip.or(session_c);
            }
        } else if let (Some(_), Some(a)) = (port, line.strip_prefix("a=crypto:")) {
            let mut it = a.split_whitespace();
            let tag = it.next().and_then(|t| t.parse::<u32>().ok());
            let suite = it.next();
            let key = it
                .next()
                .and_then(|k| k.strip_prefix("inline:"))
                .and_then(|k| k.split('|').next());
            if let (Some(tag), Some(suite), Some(key)) = (tag, suite, key) {
                crypto.push((tag, suite.to_string(), key.to_string()));
            }
        }
    }
    let port = port.ok_or(SdpError::NoMedia)?;
    let ip = media_c.or(session_c).ok_or(SdpError::NoConnection)?;
    Ok(SdpMedia {
        addr: SocketAddr::new(ip, port),
        crypto,
    })
}

/// The ng message of an `offer` (publisher side) or `answer` (subscriber side).
pub fn ng_offer_answer(
    command: &str,
    call_id: &str,
    from_tag: &str,
    to_tag: Option<&str>,
    sdp: &str,
) -> Bencode {
    let mut pairs = vec![
        ("command", Bencode::str(command)),
        ("call-id", Bencode::str(call_id)),
        ("from-tag", Bencode::str(from_tag)),
        ("sdp", Bencode::str(sdp)),
    ];
    pairs.extend(sdp_options());
    if let Some(t) = to_tag {
        pairs.push(("to-tag", Bencode::str(t)));
    }
    Bencode::dict(pairs)
}

/// Options every SDP-bearing message carries: the endpoints send from exactly what they
/// announce (keeps the bench's addresses out of rtpengine's address learning surprises), no
/// ICE, RTCP multiplexed.
fn sdp_options() -> Vec<(&'static str, Bencode)> {
    vec![
        (
            "replace",
            Bencode::List(vec![
                Bencode::str("origin"),
                Bencode::str("session-connection"),
            ]),
        ),
        ("ICE", Bencode::str("remove")),
        ("rtcp-mux", Bencode::List(vec![Bencode::str("accept")])),
    ]
}

/// The ng `publish` message: the publisher's sendonly SDP; the reply is rtpengine's recvonly
/// answer (where to send).
pub fn ng_publish(call_id: &str, from_tag: &str, sdp: &str) -> Bencode {
    let mut pairs = vec![
        ("command", Bencode::str("publish")),
        ("call-id", Bencode::str(call_id)),
        ("from-tag", Bencode::str(from_tag)),
        ("sdp", Bencode::str(sdp)),
        // `publish` keeps only codecs rtpengine can transcode unless told to take any (the
        // probes are VP8 by payload type only; rtpengine never decodes them).
        (
            "codec",
            Bencode::dict([("accept", Bencode::List(vec![Bencode::str("any")]))]),
        ),
    ];
    pairs.extend(sdp_options());
    Bencode::dict(pairs)
}

/// The ng `subscribe request` message: subscribe `to_tag` to the publisher `from_tag`; the
/// reply is rtpengine's sendonly offer (its address and the key it encrypts the copy with).
pub fn ng_subscribe_request(call_id: &str, from_tag: &str, to_tag: &str) -> Bencode {
    let mut pairs = vec![
        ("command", Bencode::str("subscribe request")),
        ("call-id", Bencode::str(call_id)),
        ("from-tag", Bencode::str(from_tag)),
        ("to-tag", Bencode::str(to_tag)),
    ];
    pairs.extend(sdp_options());
    Bencode::dict(pairs)
}

/// The ng `subscribe answer` message: the subscriber's recvonly SDP; forwarding starts.
pub fn ng_subscribe_answer(call_id: &str, to_tag: &str, sdp: &str) -> Bencode {
    let mut pairs = vec![
        ("command", Bencode::str("subscribe answer")),
        ("call-id", Bencode::str(call_id)),
        ("to-tag", Bencode::str(to_tag)),
        ("sdp", Bencode::str(sdp)),
    ];
    pairs.extend(sdp_options());
    Bencode::dict(pairs)
}

/// The ng message that ends a call, at once (`delete delay` 0: rtpengine otherwise keeps a
/// deleted call, and its ports, for its `--delete-delay`, 30 s by default).
pub fn ng_delete(call_id: &str, from_tag: &str) -> Bencode {
    Bencode::dict([
        ("command", Bencode::str("delete")),
        ("call-id", Bencode::str(call_id)),
        ("from-tag", Bencode::str(from_tag)),
        ("delete delay", Bencode::Int(0)),
    ])
}

/// The ng message that ends a whole call, every participant included.
pub fn ng_delete_call(call_id: &str) -> Bencode {
    Bencode::dict([
        ("command", Bencode::str("delete")),
        ("call-id", Bencode::str(call_id)),
        ("delete delay", Bencode::Int(0)),
    ])
}

/// A client of rtpengine's ng control port.
pub struct NgClient {
    sock: UdpSocket,
    addr: SocketAddr,
    next: u64,
    nonce: u64,
}

impl NgClient {
    pub fn new(addr: SocketAddr) -> Result<NgClient, TargetError> {
        let any: IpAddr = match addr {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let sock = UdpSocket::bind((any, 0))
            .map_err(|e| TargetError::Discovery(format!("ng socket: {e}")))?;
        sock.set_read_timeout(Some(Duration::from_millis(700)))
            .map_err(|e| TargetError::Discovery(format!("ng socket: {e}")))?;
        Ok(NgClient {
            sock,
            addr,
            next: 0,
            nonce: rand::thread_rng().next_u64(),
        })
    }

    /// Send `msg`, wait for the reply with the same cookie (resending up to 3 times), and
    /// return it; a reply whose `result` is not `ok`/`pong` becomes an error.
    pub fn call(&mut self, msg: &Bencode) -> Result<Bencode, TargetError> {
        self.next += 1;
        let cookie = format!("{:x}_{}", self.nonce, self.next);
        let what = msg
            .get("command")
            .and_then(Bencode::as_text)
            .unwrap_or_default();
        let frame = ng_frame(&cookie, msg);
        let mut buf = vec![0u8; 65536];
        for _ in 0..4 {
            self.sock
                .send_to(&frame, self.addr)
                .map_err(|e| TargetError::Discovery(format!("ng {what} to {}: {e}", self.addr)))?;
            loop {
                let n = match self.sock.recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break; // resend
                    }
                    Err(e) => {
                        return Err(TargetError::Discovery(format!(
                            "ng {what} from {}: {e}",
                            self.addr
                        )))
                    }
                };
                let Ok((c, reply)) = ng_parse(&buf[..n]) else {
                    continue;
                };
                if c != cookie {
                    continue; // a late reply to an earlier resend
                }
                let result = reply
                    .get("result")
                    .and_then(Bencode::as_text)
                    .unwrap_or_default();
                if result == "ok" || result == "pong" {
                    return Ok(reply);
                }
                let reason = reply
                    .get("error-reason")
                    .and_then(Bencode::as_text)
                    .unwrap_or(result);
                return Err(TargetError::Api {
                    what: format!("rtpengine {what}"),
                    status: 0,
                    message: reason,
                });
            }
        }
        Err(TargetError::Discovery(format!(
            "rtpengine at {} did not answer {what} (is it running with --listen-ng={}?)",
            self.addr, self.addr
        )))
    }
}

/// rtpengine as a [`Target`]: one call per publisher → subscriber pair.
pub struct RtpengineTarget {
    ng: NgClient,
    /// Calls set up: (call-id, from-tag); no from-tag for a publish/subscribe call, which is
    /// deleted whole (deleting the publisher's tag alone leaves its subscriptions).
    calls: Vec<(String, Option<String>)>,
    run: u64,
    /// Setups so far: call-ids differ between runs on the same target.
    setups: u64,
}

impl RtpengineTarget {
    /// Talk to the ng control port at `ng`.
    pub fn connect(ng: SocketAddr) -> Result<RtpengineTarget, TargetError> {
        let mut ng = NgClient::new(ng)?;
        ng.call(&Bencode::dict([("command", Bencode::str("ping"))]))?;
        let run = rand::thread_rng().next_u64();
        Ok(RtpengineTarget {
            ng,
            calls: Vec::new(),
            run,
            setups: 0,
        })
    }

    fn sdp_of(reply: &Bencode, what: &str) -> Result<SdpMedia, TargetError> {
        let sdp = reply
            .get("sdp")
            .and_then(Bencode::as_text)
            .ok_or(TargetError::Missing("sdp in the ng reply"))?;
        parse_sdp(&sdp).map_err(|e| TargetError::Api {
            what: format!("rtpengine {what}"),
            status: 0,
            message: format!("unusable SDP: {e}"),
        })
    }

    /// The key rtpengine announced for our suite in an SDP it generated, and its tag.
    fn key_of(
        sdp: &SdpMedia,
        profile: Profile,
        what: &str,
    ) -> Result<(u32, MasterKey), TargetError> {
        let (tag, _, key) = sdp
            .crypto
            .iter()
            .find(|(_, suite, _)| suite == profile.name())
            .ok_or_else(|| TargetError::Api {
                what: format!("rtpengine {what}"),
                status: 0,
                message: format!("its SDP has no {} crypto line", profile.name()),
            })?;
        let key = MasterKey::from_base64(profile, key).map_err(|e| TargetError::Api {
            what: format!("rtpengine {what}"),
            status: 0,
            message: format!("rtpengine's {} key: {e}", profile.name()),
        })?;
        Ok((*tag, key))
    }

    /// Fan-out 1: one offer/answer call per publisher → subscriber pair.
    fn create_pairs(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        let profile: Profile = plan.profile;
        let mut publisher_dst = Vec::with_capacity(plan.publishers.len());
        let mut subscriber_keys = Vec::with_capacity(plan.subscribers.len());
        for (i, (p, (s, _))) in plan.publishers.iter().zip(&plan.subscribers).enumerate() {
            let call = format!("sluice-bench-{:x}-{}-{i}", self.run, self.setups);
            let from = format!("pub{i}");
            let to = format!("sub{i}");
            let offer = endpoint_sdp(p.peer, &p.rx_key, 1, self.run ^ i as u64);
            let r = self
                .ng
                .call(&ng_offer_answer("offer", &call, &from, None, &offer))?;
            self.calls.push((call.clone(), Some(from.clone())));
            // rtpengine offers its own keys to the subscriber; pick the one for our suite.
            let (tag, sub_key) = Self::key_of(&Self::sdp_of(&r, "offer")?, profile, "offer")?;
            let answer = endpoint_sdp(s.peer, &s.rx_key, tag, self.run ^ ((i as u64 + 1) << 32));
            let r = self
                .ng
                .call(&ng_offer_answer("answer", &call, &from, Some(&to), &answer))?;
            let to_pub = Self::sdp_of(&r, "answer")?;
            publisher_dst.push(crate::target::reachable(to_pub.addr));
            subscriber_keys.push(sub_key);
        }
        Ok(Wiring {
            publisher_dst,
            subscriber_keys,
            publisher_keys: Vec::new(),
        })
    }

    /// Any fan-out: one call per publisher with `publish`, then `subscribe request` +
    /// `subscribe answer` per subscriber.
    fn create_fanout(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        let profile: Profile = plan.profile;
        let mut publisher_dst = Vec::with_capacity(plan.publishers.len());
        let mut calls = Vec::with_capacity(plan.publishers.len());
        for (i, p) in plan.publishers.iter().enumerate() {
            let call = format!("sluice-bench-{:x}-{}-{i}", self.run, self.setups);
            let from = format!("pub{i}");
            let sdp = endpoint_sdp_dir(p.peer, &p.rx_key, 1, self.run ^ i as u64, "sendonly");
            let r = self.ng.call(&ng_publish(&call, &from, &sdp))?;
            self.calls.push((call.clone(), None));
            let to_pub = Self::sdp_of(&r, "publish")?;
            publisher_dst.push(crate::target::reachable(to_pub.addr));
            calls.push((call, from));
        }
        let mut subscriber_keys = Vec::with_capacity(plan.subscribers.len());
        for (j, (s, from_pub)) in plan.subscribers.iter().enumerate() {
            let (call, from) = calls.get(*from_pub).ok_or(TargetError::Discovery(format!(
                "subscriber {j} names publisher {from_pub}, which the plan does not have"
            )))?;
            let to = format!("sub{j}");
            let r = self.ng.call(&ng_subscribe_request(call, from, &to))?;
            let (tag, sub_key) = Self::key_of(
                &Self::sdp_of(&r, "subscribe request")?,
                profile,
                "subscribe request",
            )?;
            let sdp = endpoint_sdp_dir(
                s.peer,
                &s.rx_key,
                tag,
                self.run ^ ((j as u64 + 1) << 32),
                "recvonly",
            );
            self.ng.call(&ng_subscribe_answer(call, &to, &sdp))?;
            subscriber_keys.push(sub_key);
        }
        Ok(Wiring {
            publisher_dst,
            subscriber_keys,
            publisher_keys: Vec::new(),
        })
    }
}

impl Target for RtpengineTarget {
    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        self.setups += 1;
        let one_to_one = plan.subscribers.len() == plan.publishers.len()
            && plan
                .subscribers
                .iter()
                .enumerate()
                .all(|(j, (_, i))| *i == j);
        if one_to_one {
            self.create_pairs(plan)
        } else {
            self.create_fanout(plan)
        }
    }

    fn info(&mut self) -> Result<TargetInfo, TargetError> {
        Ok(TargetInfo {
            kind: "rtpengine".into(),
            admin_url: Some(format!("ng://{}", self.ng.addr)),
            ..TargetInfo::default()
        })
    }

    fn teardown(&mut self) -> Result<usize, TargetError> {
        let mut removed = 0;
        let mut first_err = None;
        for (call, from) in std::mem::take(&mut self.calls) {
            let msg = match &from {
                Some(f) => ng_delete(&call, f),
                None => ng_delete_call(&call),
            };
            match self.ng.call(&msg) {
                Ok(_) => removed += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(removed),
            Some(e) => Err(e),
        }
    }

    fn stats(&mut self) -> Option<Json> {
        self.ng
            .call(&Bencode::dict([("command", Bencode::str("statistics"))]))
            .ok()
            .map(|r| r.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trip_and_sorted_keys() {
        let v = Bencode::dict([
            ("sdp", Bencode::str("v=0")),
            ("command", Bencode::str("offer")),
            ("n", Bencode::Int(-42)),
            ("l", Bencode::List(vec![Bencode::Int(0), Bencode::str("")])),
        ]);
        let e = v.encode();
        assert_eq!(
            e,
            b"d7:command5:offer1:lli0e0:e1:ni-42e3:sdp3:v=0e".to_vec()
        );
        assert_eq!(Bencode::decode(&e).unwrap(), v);
        assert_eq!(v.get("n"), Some(&Bencode::Int(-42)));
        assert_eq!(
            v.to_json(),
            serde_json::json!({"command":"offer","l":[0,""],"n":-42,"sdp":"v=0"})
        );
    }

    #[test]
    fn bencode_rejects_bad_input() {
        for (bad, what) in [
            (&b""[..], "empty"),
            (b"i12", "unterminated int"),
            (b"i-0e", "minus zero"),
            (b"i03e", "leading zero"),
            (b"ie", "empty int"),
            (b"5:abc", "short string"),
            (b"d3:keye", "dict without value"),
            (b"di1ei2ee", "non-string key"),
            (b"l", "unterminated list"),
            (b"x", "unknown type"),
            (b"1234567890:a", "huge length"),
            (b"i1ei2e", "trailing"),
        ] {
            assert!(Bencode::decode(bad).is_err(), "{what} accepted");
        }
        let deep = "l".repeat(100) + &"e".repeat(100);
        assert_eq!(Bencode::decode(deep.as_bytes()), Err(BencodeError::Depth));
    }

    #[test]
    fn ng_frames_and_messages() {
        let m = ng_delete("c1", "t1");
        let f = ng_frame("ab_1", &m);
        assert_eq!(
            f,
            b"ab_1 d7:call-id2:c17:command6:delete12:delete delayi0e8:from-tag2:t1e".to_vec()
        );
        let (cookie, back) = ng_parse(&f).unwrap();
        assert_eq!((cookie.as_str(), back), ("ab_1", m));
        let o = ng_offer_answer("answer", "c", "f", Some("t"), "v=0\r\n");
        assert_eq!(o.get("to-tag").and_then(Bencode::as_text).unwrap(), "t");
        assert_eq!(
            o.get("command").and_then(Bencode::as_text).unwrap(),
            "answer"
        );
        assert_eq!(o.get("sdp").and_then(Bencode::as_text).unwrap(), "v=0\r\n");
        assert!(ng_offer_answer("offer", "c", "f", None, "")
            .get("to-tag")
            .is_none());
        assert!(ng_parse(b"nospace").is_err());
    }

    #[test]
    fn publish_subscribe_messages() {
        let text = |m: &Bencode, k: &str| m.get(k).and_then(Bencode::as_text).unwrap();
        let p = ng_publish("c", "pub0", "v=0\r\n");
        assert_eq!(text(&p, "command"), "publish");
        assert_eq!(
            (text(&p, "call-id"), text(&p, "from-tag")),
            ("c".into(), "pub0".into())
        );
        assert_eq!(
            p.get("codec").and_then(|c| c.get("accept")),
            Some(&Bencode::List(vec![Bencode::str("any")]))
        );
        let r = ng_subscribe_request("c", "pub0", "sub3");
        assert_eq!(text(&r, "command"), "subscribe request");
        assert_eq!(
            (text(&r, "from-tag"), text(&r, "to-tag")),
            ("pub0".into(), "sub3".into())
        );
        assert!(r.get("sdp").is_none());
        let a = ng_subscribe_answer("c", "sub3", "v=0\r\n");
        assert_eq!(text(&a, "command"), "subscribe answer");
        assert_eq!(text(&a, "to-tag"), "sub3");
        assert!(a.get("from-tag").is_none());
        let d = ng_delete_call("c");
        assert!(d.get("from-tag").is_none());
        assert_eq!(d.get("delete delay"), Some(&Bencode::Int(0)));
        let key = MasterKey::new(Profile::Aes128CmSha1_80, &[1u8; 30]).unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert!(endpoint_sdp_dir(peer, &key, 1, 1, "recvonly").ends_with("a=recvonly\r\n"));
        assert!(endpoint_sdp(peer, &key, 1, 1).ends_with("a=sendrecv\r\n"));
    }

    #[test]
    fn sdp_round_trip_through_the_parser() {
        let key = MasterKey::new(Profile::AeadAes128Gcm, &[7u8; 28]).unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let sdp = endpoint_sdp(peer, &key, 3, 9);
        assert!(sdp.contains("a=crypto:3 AEAD_AES_128_GCM inline:"));
        let m = parse_sdp(&sdp).unwrap();
        assert_eq!(m.addr, peer);
        assert_eq!(m.crypto.len(), 1);
        let (tag, suite, b64) = &m.crypto[0];
        assert_eq!((*tag, suite.as_str()), (3, "AEAD_AES_128_GCM"));
        assert_eq!(
            MasterKey::from_base64(Profile::AeadAes128Gcm, b64).unwrap(),
            key
        );
        let v6: SocketAddr = "[::1]:5004".parse().unwrap();
        assert_eq!(parse_sdp(&endpoint_sdp(v6, &key, 1, 1)).unwrap().addr, v6);
    }

    #[test]
    fn sdp_parser_takes_media_level_connection_and_strips_lifetime() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 30000 RTP/SAVP 0\r\nc=IN IP4 127.0.0.1\r\n\
                   a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJD|2^31|1:1\r\n\
                   a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:REVG\r\n\
                   m=video 30002 RTP/SAVP 96\r\na=crypto:9 X inline:Y\r\n";
        let m = parse_sdp(sdp).unwrap();
        assert_eq!(m.addr, "127.0.0.1:30000".parse().unwrap());
        assert_eq!(
            m.crypto,
            vec![
                (1, "AES_CM_128_HMAC_SHA1_80".into(), "QUJD".into()),
                (2, "AES_CM_128_HMAC_SHA1_32".into(), "REVG".into()),
            ]
        );
        assert_eq!(parse_sdp("v=0\r\n"), Err(SdpError::NoMedia));
        assert_eq!(
            parse_sdp("m=audio 1 RTP/AVP 0\r\n"),
            Err(SdpError::NoConnection)
        );
        assert!(matches!(
            parse_sdp("m=audio x RTP/AVP 0\r\n"),
            Err(SdpError::BadMedia(_))
        ));
    }
}
