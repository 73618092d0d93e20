//! Janus as a system under test: the videoroom plugin driven over Janus's HTTP API (REST with
//! long-poll events), the bench as every WebRTC peer (`sluice-bench webrtc --target-kind
//! janus`).
//!
//! Per endpoint one Janus session and one plugin handle. Publisher `i` creates room
//! `<base> + i`, joins it as a publisher and publishes with the bench's offer (Janus answers);
//! a viewer joins the room as a subscriber of that publisher's feed, gets Janus's offer and
//! starts with the bench's answer. Janus is a full ICE agent: it checks too, and when it offers
//! (subscriptions) it is the controlling agent ([`crate::webrtc::peer`] handles both). Sessions
//! are kept alive with `keepalive` requests while media flows (Janus drops a session after 60 s
//! of silence).
//!
//! Owns: the Janus JSON messages and the room/feed bookkeeping. May not touch: ICE, DTLS, media.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::target::TargetInfo;
use crate::webrtc::http::{self, HttpError, Url};
use crate::webrtc::sdp::Remote;
use crate::webrtc::{Describe, JoinError, Role, Signaling, HTTP_TIMEOUT};

/// Longest wait for a publisher's feed to appear to subscribers.
const FEED_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for one asynchronous Janus event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A Janus server's HTTP API.
pub struct Janus {
    base: Url,
    /// Room number of publisher 0 (random, so runs do not collide).
    room_base: u64,
    /// Per publisher index: (room, feed id), once it published.
    feeds: Mutex<HashMap<usize, (u64, u64)>>,
}

fn err(what: &str, v: &Value) -> JoinError {
    let reason = v["error"]["reason"]
        .as_str()
        .or_else(|| v["plugindata"]["data"]["error"].as_str())
        .map_or_else(|| v.to_string(), str::to_string);
    JoinError::Signal(format!("janus {what}: {reason}"))
}

impl Janus {
    /// `base`: e.g. `http://127.0.0.1:8088/janus`.
    pub fn new(base: &str) -> Result<Janus, HttpError> {
        let mut base = Url::parse(base)?;
        base.path = base.path.trim_end_matches('/').to_string();
        Ok(Janus {
            base,
            room_base: 1_000_000 + u64::from(rand::random::<u32>() % 1_000_000_000),
            feeds: Mutex::new(HashMap::new()),
        })
    }

    fn url(&self, path: &str) -> Url {
        Url {
            path: format!("{}{path}", self.base.path),
            ..self.base.clone()
        }
    }

    fn post(&self, path: &str, mut body: Value) -> Result<Value, JoinError> {
        body["transaction"] = json!(format!("{:016x}", rand::random::<u64>()));
        let url = self.url(path);
        let r = http::request(
            &url,
            "POST",
            Some("application/json"),
            None,
            body.to_string().as_bytes(),
            HTTP_TIMEOUT,
        )?;
        if !r.ok() {
            return Err(JoinError::Status {
                what: format!("POST {url}"),
                status: r.status,
                body: r.text(),
            });
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| JoinError::Signal(format!("janus: {url}: not JSON: {e}")))
    }

    /// A new session with a videoroom handle: `(session, handle)`.
    fn attach(&self) -> Result<(u64, u64), JoinError> {
        let v = self.post("", json!({"janus": "create"}))?;
        let session = v["data"]["id"].as_u64().ok_or_else(|| err("create", &v))?;
        let v = self.post(
            &format!("/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )?;
        let handle = v["data"]["id"].as_u64().ok_or_else(|| err("attach", &v))?;
        Ok((session, handle))
    }

    /// A synchronous videoroom request (answered in the POST).
    fn request(&self, sh: (u64, u64), body: Value) -> Result<Value, JoinError> {
        let v = self.post(
            &format!("/{}/{}", sh.0, sh.1),
            json!({"janus": "message", "body": body}),
        )?;
        if v["janus"] != "success" || v["plugindata"]["data"]["error"].is_string() {
            return Err(err("request", &v));
        }
        Ok(v["plugindata"]["data"].clone())
    }

    /// An asynchronous videoroom request: the plugin's event (and its JSEP, if any).
    fn message(
        &self,
        sh: (u64, u64),
        body: Value,
        jsep: Option<Value>,
    ) -> Result<(Value, Option<Value>), JoinError> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let v = self.post(&format!("/{}/{}", sh.0, sh.1), m)?;
        match v["janus"].as_str() {
            Some("ack") => self.event(sh),
            Some("event") => Ok((v["plugindata"]["data"].clone(), v.get("jsep").cloned())),
            _ => Err(err("message", &v)),
        }
    }

    /// Long-poll the session until the plugin's next event.
    fn event(&self, sh: (u64, u64)) -> Result<(Value, Option<Value>), JoinError> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while Instant::now() < deadline {
            let url = self.url(&format!("/{}?maxev=1", sh.0));
            let r = http::request(&url, "GET", None, None, b"", Duration::from_secs(40))?;
            let v: Value = serde_json::from_slice(&r.body)
                .map_err(|e| JoinError::Signal(format!("janus: {url}: not JSON: {e}")))?;
            // A long poll may answer one event or an array of them.
            let events = match v {
                Value::Array(a) => a,
                one => vec![one],
            };
            for e in events {
                match e["janus"].as_str() {
                    Some("event") if e["sender"].as_u64() == Some(sh.1) => {
                        let data = e["plugindata"]["data"].clone();
                        if data["error"].is_string() {
                            return Err(err("event", &e));
                        }
                        return Ok((data, e.get("jsep").cloned()));
                    }
                    Some("hangup") | Some("detached") => return Err(err("event", &e)),
                    _ => {}
                }
            }
        }
        Err(JoinError::Signal("janus: no event within 20 s".into()))
    }

    fn sdp_of(jsep: Option<Value>, what: &str) -> Result<String, JoinError> {
        jsep.and_then(|j| j["sdp"].as_str().map(str::to_string))
            .ok_or_else(|| JoinError::Signal(format!("janus: {what} carried no SDP")))
    }
}

impl Signaling for Janus {
    fn info(&self) -> TargetInfo {
        let mut info = TargetInfo {
            kind: "janus (videoroom)".into(),
            admin_url: Some(self.base.to_string()),
            ..TargetInfo::default()
        };
        if let Ok(r) = http::request(&self.url("/info"), "GET", None, None, b"", HTTP_TIMEOUT) {
            if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
                info.version = v["version_string"].as_str().map(str::to_string);
            }
        }
        info
    }

    fn join(&self, role: Role, describe: &Describe<'_>) -> Result<(Remote, String), JoinError> {
        let sh = self.attach()?;
        let handle = format!("{}/{}", sh.0, sh.1);
        let r =
            match role {
                Role::Publish(i) => {
                    let room = self.room_base + i as u64;
                    self.request(
                        sh,
                        json!({"request": "create", "room": room, "publishers": 1,
                           "audiocodec": "opus", "description": format!("sluice-bench {i}")}),
                    )?;
                    let (joined, _) = self.message(
                        sh,
                        json!({"request": "join", "ptype": "publisher", "room": room}),
                        None,
                    )?;
                    let feed = joined["id"].as_u64().ok_or_else(|| {
                        JoinError::Signal(format!("janus: join answered {joined}"))
                    })?;
                    let offer = describe(None);
                    let (_, jsep) = self.message(
                        sh,
                        json!({"request": "publish", "audio": true, "video": false, "data": false}),
                        Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
                    )?;
                    let remote = Remote::parse(&Self::sdp_of(jsep, "publish")?)?;
                    // A poisoned lock means another join thread panicked: a bench bug.
                    self.feeds.lock().expect("feeds").insert(i, (room, feed));
                    remote
                }
                Role::Subscribe(i) => {
                    let (room, feed) =
                        *self.feeds.lock().expect("feeds").get(&i).ok_or_else(|| {
                            JoinError::Signal(format!("janus: publisher {i} not in"))
                        })?;
                    // Janus lists a feed only once the publisher's PeerConnection is up on its
                    // side, which may trail the bench's end of the DTLS handshake a little.
                    let deadline = Instant::now() + FEED_WAIT;
                    let (_, jsep) = loop {
                        let r = self.message(
                            sh,
                            json!({"request": "join", "ptype": "subscriber", "room": room,
                                   "streams": [{"feed": feed}]}),
                            None,
                        );
                        match r {
                            Err(JoinError::Signal(m))
                                if m.contains("No such feed") && Instant::now() < deadline =>
                            {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            r => break r?,
                        }
                    };
                    let offer = Remote::parse(&Self::sdp_of(jsep, "subscribe")?)?;
                    let answer = describe(Some(&offer));
                    self.message(
                        sh,
                        json!({"request": "start"}),
                        Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
                    )?;
                    offer
                }
            };
        Ok((r, handle))
    }

    fn leave(&self, handle: &str) -> Result<(), JoinError> {
        let session = handle.split('/').next().unwrap_or(handle);
        // Destroying the session hangs its PeerConnection up and detaches its handle.
        self.post(&format!("/{session}"), json!({"janus": "destroy"}))
            .map(|_| ())
    }

    fn refresh(&self, handle: &str) {
        let session = handle.split('/').next().unwrap_or(handle);
        // Best effort: a refused keepalive shows as loss in the run.
        let _ = self.post(&format!("/{session}"), json!({"janus": "keepalive"}));
    }
}
