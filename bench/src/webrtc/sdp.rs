//! The bench's SDP: one fixed audio section (the probes travel as Opus-typed RTP, which no
//! server inspects for keyframes), offered by the bench for WHIP and WHEP, answered by it for a
//! server that offers (Janus subscriptions), and the few attributes read back.
//!
//! Owns: the text of our offers and answers, reading the peer's ICE credentials, DTLS
//! fingerprint and role, host candidates and SSRCs. Pure: no I/O; parsing is bounded and
//! returns typed errors.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Largest SDP read.
pub const MAX_SDP: usize = 64 * 1024;
/// Most candidates kept from one description.
pub const MAX_CANDIDATES: usize = 32;

/// Why a description cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP is larger than 64 KiB")]
    TooLarge,
    #[error("the SDP has no {0}")]
    Missing(&'static str),
    #[error("the SDP's audio section was refused (port 0)")]
    Rejected,
    #[error("unsupported a=setup:{0}")]
    Setup(String),
    #[error("no usable UDP host candidate for {0}")]
    NoCandidate(&'static str),
}

/// Which way our media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendOnly,
    RecvOnly,
}

/// Our DTLS role as the description's `a=setup` implies it for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// The peer said `actpass` (we choose) or `passive`: we are the DTLS client.
    Active,
    /// The peer said `active`: we are the DTLS server.
    Passive,
}

/// What a description of ours carries.
#[derive(Debug, Clone)]
pub struct Local<'a> {
    pub direction: Direction,
    pub ufrag: &'a str,
    pub pwd: &'a str,
    /// `sha-256 AB:CD:…`.
    pub fingerprint: &'a str,
    /// `actpass` in offers, `active` in our answers.
    pub setup: &'a str,
    pub candidate: SocketAddr,
    /// A sender's SSRC (announced so servers can route by it).
    pub ssrc: Option<u32>,
    /// Payload type of the Opus codec line.
    pub pt: u8,
    /// Media id (`0` in our offers; the offer's in answers).
    pub mid: &'a str,
}

/// Our description (offer or answer) for one audio section.
pub fn describe(l: &Local<'_>) -> String {
    let ip = l.candidate.ip();
    let (net, sess_ip) = match ip {
        IpAddr::V4(_) => ("IP4", ip.to_string()),
        IpAddr::V6(_) => ("IP6", ip.to_string()),
    };
    let session_id = u64::from(rand::random::<u32>());
    let mut s = String::with_capacity(1024);
    let _ = write!(
        s,
        "v=0\r\no=- {session_id} 2 IN {net} {sess_ip}\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE {mid}\r\na=msid-semantic: WMS sluice-bench\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN {net} {sess_ip}\r\na=rtcp:9 IN {net} {sess_ip}\r\n\
         a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=ice-options:ice2\r\n\
         a=fingerprint:{fp}\r\na=setup:{setup}\r\na=mid:{mid}\r\n{dir}\r\na=rtcp-mux\r\n\
         a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} minptime=10;useinbandfec=1\r\n",
        mid = l.mid,
        pt = l.pt,
        ufrag = l.ufrag,
        pwd = l.pwd,
        fp = l.fingerprint,
        setup = l.setup,
        dir = match l.direction {
            Direction::SendOnly => "a=sendonly",
            Direction::RecvOnly => "a=recvonly",
        },
    );
    if let Some(ssrc) = l.ssrc {
        let _ = write!(
            s,
            "a=msid:sluice-bench probe\r\na=ssrc:{ssrc} cname:sluice-bench\r\n\
             a=ssrc:{ssrc} msid:sluice-bench probe\r\n"
        );
    }
    let _ = write!(
        s,
        "a=candidate:1 1 udp 2130706431 {} {} typ host\r\na=end-of-candidates\r\n",
        l.candidate.ip(),
        l.candidate.port()
    );
    s
}

/// The peer's description as far as the bench needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub ufrag: String,
    pub pwd: String,
    /// `(hash name, colon-separated hex)`, e.g. `("sha-256", "AB:…")`.
    pub fingerprint: (String, String),
    pub setup: Setup,
    /// The peer is an ICE-lite agent (it sends no checks).
    pub lite: bool,
    /// UDP host (and other) candidates with literal addresses, component 1, in order.
    pub candidates: Vec<SocketAddr>,
    /// SSRCs the peer announced for its sending side.
    pub ssrcs: Vec<u32>,
    /// The first audio section's media id, if any.
    pub mid: Option<String>,
    /// The first audio section's Opus payload type, if any.
    pub opus_pt: Option<u8>,
}

impl Remote {
    pub fn parse(sdp: &str) -> Result<Remote, SdpError> {
        if sdp.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let mut ufrag = None;
        let mut pwd = None;
        let mut fingerprint = None;
        let mut setup = None;
        let mut lite = false;
        let mut candidates = Vec::new();
        let mut ssrcs = Vec::new();
        let mut mid = None;
        let mut opus_pt = None;
        // Only the session level and the first audio section are read; later sections are
        // bundled on the same transport.
        let mut section = 0usize;
        let mut audio_seen = false;
        let mut in_audio = false;
        for line in sdp.lines() {
            let line = line.trim_end();
            if let Some(m) = line.strip_prefix("m=") {
                section += 1;
                in_audio = m.starts_with("audio ") && !audio_seen;
                if in_audio {
                    audio_seen = true;
                    if m.split_whitespace().nth(1) == Some("0") {
                        return Err(SdpError::Rejected);
                    }
                }
                continue;
            }
            if section > 0 && !in_audio {
                continue;
            }
            let Some(a) = line.strip_prefix("a=") else {
                continue;
            };
            let (k, v) = a.split_once(':').unwrap_or((a, ""));
            match k {
                "ice-lite" => lite = true,
                "ice-ufrag" => {
                    ufrag.get_or_insert_with(|| v.to_string());
                }
                "ice-pwd" => {
                    pwd.get_or_insert_with(|| v.to_string());
                }
                "fingerprint" => {
                    if let Some((h, hex)) = v.split_once(' ') {
                        fingerprint
                            .get_or_insert_with(|| (h.to_ascii_lowercase(), hex.trim().into()));
                    }
                }
                "setup" => {
                    setup.get_or_insert_with(|| v.to_string());
                }
                "mid" => {
                    mid.get_or_insert_with(|| v.to_string());
                }
                "rtpmap" => {
                    if let Some((pt, codec)) = v.split_once(' ') {
                        if codec.to_ascii_lowercase().starts_with("opus/48000") {
                            if let Ok(pt) = pt.parse() {
                                opus_pt.get_or_insert(pt);
                            }
                        }
                    }
                }
                "ssrc" => {
                    if let Some(n) = v.split(' ').next().and_then(|n| n.parse().ok()) {
                        if !ssrcs.contains(&n) && ssrcs.len() < MAX_CANDIDATES {
                            ssrcs.push(n);
                        }
                    }
                }
                "candidate" if candidates.len() < MAX_CANDIDATES => {
                    if let Some(c) = candidate(v) {
                        candidates.push(c);
                    }
                }
                _ => {}
            }
        }
        let setup = match setup.as_deref() {
            Some("actpass") | Some("passive") => Setup::Active,
            Some("active") => Setup::Passive,
            Some(other) => return Err(SdpError::Setup(other.to_string())),
            None => return Err(SdpError::Missing("a=setup")),
        };
        if !audio_seen {
            return Err(SdpError::Missing("audio section"));
        }
        Ok(Remote {
            ufrag: ufrag.ok_or(SdpError::Missing("a=ice-ufrag"))?,
            pwd: pwd.ok_or(SdpError::Missing("a=ice-pwd"))?,
            fingerprint: fingerprint.ok_or(SdpError::Missing("a=fingerprint"))?,
            setup,
            lite,
            candidates,
            ssrcs,
            mid,
            opus_pt,
        })
    }

    /// The first candidate of `family` (the bench's socket family).
    pub fn candidate_for(&self, v4: bool) -> Result<SocketAddr, SdpError> {
        self.candidates
            .iter()
            .find(|c| c.is_ipv4() == v4)
            .copied()
            .ok_or(SdpError::NoCandidate(if v4 { "IPv4" } else { "IPv6" }))
    }
}

/// `foundation component transport priority address port typ …` → the address of a UDP
/// candidate of component 1 with a literal IP (mDNS names are skipped).
pub fn candidate(v: &str) -> Option<SocketAddr> {
    let f: Vec<&str> = v.split_whitespace().take(6).collect();
    if f.len() < 6 || f[1] != "1" || !f[2].eq_ignore_ascii_case("udp") {
        return None;
    }
    let ip: IpAddr = f[4].parse().ok()?;
    let port: u16 = f[5].parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
        a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n\
        a=fingerprint:SHA-256 AB:CD\r\na=setup:passive\r\na=mid:0\r\na=rtpmap:96 opus/48000/2\r\n\
        a=ssrc:42 cname:x\r\na=ssrc:42 msid:a b\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\n\
        a=candidate:2 1 udp 2130706431 ::1 4000 typ host\r\n\
        a=candidate:3 1 udp 2130706431 abc.local 4000 typ host\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 97\r\na=ice-ufrag:other\r\n";

    #[test]
    fn reads_an_answer() {
        let r = Remote::parse(ANSWER).unwrap();
        assert!(r.lite);
        assert_eq!(r.ufrag, "abcd");
        assert_eq!(r.fingerprint, ("sha-256".into(), "AB:CD".into()));
        assert_eq!(r.setup, Setup::Active);
        assert_eq!(r.candidates.len(), 2);
        assert_eq!(
            r.candidate_for(true).unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(r.candidate_for(false).unwrap().port(), 4000);
        assert_eq!(r.ssrcs, vec![42]);
        assert_eq!(r.opus_pt, Some(96));
        assert_eq!(r.mid.as_deref(), Some("0"));
    }

    #[test]
    fn refusals_are_typed() {
        assert_eq!(
            Remote::parse(&ANSWER.replace("a=setup:passive", "a=setup:holdconn")),
            Err(SdpError::Setup("holdconn".into()))
        );
        assert_eq!(
            Remote::parse(&ANSWER.replace("a=ice-pwd", "a=x")),
            Err(SdpError::Missing("a=ice-pwd"))
        );
        assert_eq!(
            Remote::parse(&ANSWER.replace("m=audio 9", "m=audio 0")),
            Err(SdpError::Rejected)
        );
        assert_eq!(
            Remote::parse(&"a".repeat(MAX_SDP + 1)),
            Err(SdpError::TooLarge)
        );
        let active = Remote::parse(&ANSWER.replace("a=setup:passive", "a=setup:active"));
        assert_eq!(active.unwrap().setup, Setup::Passive);
    }

    #[test]
    fn our_offer_reads_back() {
        let s = describe(&Local {
            direction: Direction::SendOnly,
            ufrag: "uf",
            pwd: "pw",
            fingerprint: "sha-256 01:02",
            setup: "actpass",
            candidate: "127.0.0.1:5000".parse().unwrap(),
            ssrc: Some(7),
            pt: 96,
            mid: "0",
        });
        assert!(s.contains("a=sendonly\r\n"));
        let r = Remote::parse(&s).unwrap();
        assert_eq!(r.ssrcs, vec![7]);
        assert_eq!(r.candidates, vec!["127.0.0.1:5000".parse().unwrap()]);
        assert_eq!(r.setup, Setup::Active);
    }
}
