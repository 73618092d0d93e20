//! A static-key SRTP peer that reaches the relay over ICE-TCP (RFC 6544 active side, RFC 4571
//! framing): one TCP connection, an authenticated Binding check with USE-CANDIDATE first, then
//! SRTP in frames. And the admin API's `POST` for the session it belongs to.

use contract::srtp::Context;
use contract::wire::stun::{self, Class, StunMessage, StunWriter, METHOD_BINDING};
use relay::batch::MAX_DATAGRAM;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A Binding request as an ICE agent in the controlling role sends it: USERNAME
/// `user`, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE when `nominate`, MESSAGE-INTEGRITY with
/// `key`, FINGERPRINT.
pub fn binding_check(txid: [u8; 12], user: &str, key: &str, nominate: bool) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(
        &mut buf,
        stun::message_type(METHOD_BINDING, Class::Request),
        &txid,
    )
    .expect("writer");
    w.username(user.as_bytes()).expect("username");
    w.priority(1_518_280_447).expect("priority");
    w.ice_controlling(0x5eed_1ce7).expect("controlling");
    if nominate {
        w.use_candidate().expect("use-candidate");
    }
    w.message_integrity(key.as_bytes()).expect("integrity");
    w.fingerprint().expect("fingerprint");
    let n = w.finish();
    buf[..n].to_vec()
}

/// The ICE credentials a static session got from `POST /v1/sessions` with `ice`.
#[derive(Debug, Clone)]
pub struct IceCreds {
    /// The relay's ufrag and password.
    pub ufrag: String,
    pub pwd: String,
    /// Ours.
    pub remote_ufrag: String,
}

impl IceCreds {
    /// From the 201 body of `POST /v1/sessions`.
    pub fn from_created(v: &Value) -> IceCreds {
        let s = |k: &str| {
            v["ice"][k]
                .as_str()
                .unwrap_or_else(|| panic!("ice.{k} in {v}"))
        };
        IceCreds {
            ufrag: s("ufrag").to_string(),
            pwd: s("pwd").to_string(),
            remote_ufrag: s("remote_ufrag").to_string(),
        }
    }

    /// USERNAME of our checks: `relay_ufrag:our_ufrag` (RFC 8445 §7.2.2).
    pub fn username(&self) -> String {
        format!("{}:{}", self.ufrag, self.remote_ufrag)
    }
}

/// One connection to the relay's ICE-TCP port carrying RFC 4571 frames.
pub struct IceTcpPeer {
    pub stream: TcpStream,
    /// Received bytes not yet taken as whole frames.
    pending: Vec<u8>,
    txid: u64,
}

impl IceTcpPeer {
    pub fn connect(relay: SocketAddr) -> IceTcpPeer {
        let stream = TcpStream::connect(relay).unwrap_or_else(|e| panic!("connect {relay}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        IceTcpPeer {
            stream,
            pending: Vec::new(),
            txid: 0,
        }
    }

    /// Write one datagram as a frame.
    pub fn send_frame(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = u16::try_from(data.len()).expect("datagram under 64 KiB");
        let mut f = Vec::with_capacity(2 + data.len());
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(data);
        self.stream.write_all(&f)
    }

    /// The next whole frame, waiting at most `timeout`; `None` on timeout or end of stream.
    pub fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        loop {
            if self.pending.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([self.pending[0], self.pending[1]]));
                if self.pending.len() >= 2 + n {
                    let f = self.pending[2..2 + n].to_vec();
                    self.pending.drain(..2 + n);
                    return Some(f);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    /// Send a check (a fresh transaction id) and wait up to `timeout` for its Binding success
    /// response; frames of anything else meanwhile are skipped. The XOR-MAPPED-ADDRESS of the
    /// answer, or `None` when none came.
    pub fn check(
        &mut self,
        creds: &IceCreds,
        pwd: &str,
        nominate: bool,
        timeout: Duration,
    ) -> Option<SocketAddr> {
        self.txid += 1;
        let mut txid = [0x7c; 12];
        txid[..8].copy_from_slice(&self.txid.to_be_bytes());
        let req = binding_check(txid, &creds.username(), pwd, nominate);
        self.send_frame(&req).ok()?;
        let deadline = Instant::now() + timeout;
        while let Some(f) = self.recv_frame(deadline.saturating_duration_since(Instant::now())) {
            let Ok(m) = StunMessage::parse(&f) else {
                continue;
            };
            if m.transaction_id() == txid && m.class() == Class::SuccessResponse {
                m.verify_integrity(creds.pwd.as_bytes()).ok()?;
                return m.xor_mapped_address();
            }
        }
        None
    }

    /// Nominate this connection: checks with USE-CANDIDATE every 500 ms until one is answered,
    /// for up to `timeout`. Panics when none is.
    pub fn nominate(&mut self, creds: &IceCreds, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(a) = self.check(creds, &creds.pwd, true, Duration::from_millis(500)) {
                return a;
            }
        }
        panic!("no Binding success over ICE-TCP within {timeout:?}");
    }

    /// Protect an RTP packet (`ssrc`, `seq`, `payload`) with `ctx` and send it as a frame.
    pub fn send_rtp(
        &mut self,
        ctx: &mut Context,
        ssrc: u32,
        seq: u16,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        buf[0] = 0x80;
        buf[1] = 96;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        buf[12..12 + payload.len()].copy_from_slice(payload);
        let n = ctx
            .protect_rtp(&mut buf, 12 + payload.len())
            .expect("protect");
        self.send_frame(&buf[..n])
    }
}

/// `POST` a JSON body to the admin API at `url` (`http://HOST:PORT`) with the admin token;
/// (status, JSON body or null).
pub fn admin_post(url: &str, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let host = url.strip_prefix("http://").expect("http:// admin URL");
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, serde_json::from_str(rest).unwrap_or(Value::Null))
}
