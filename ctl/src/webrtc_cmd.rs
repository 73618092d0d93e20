//! WebRTC administration: `sluicectl app|key|room|token` over the admin API
//! (`/v1/apps`, `/v1/apps/{id}/keys`, `/v1/rooms`, `/v1/tokens`; docs/API.md).
//!
//! Owns: what these commands send and print (their grammar is in [`crate::cli`]). May not touch: discovery and
//! the HTTP client (used as they are), process spawning.

use serde_json::{json, Value};

use crate::api::Client;
use crate::cli::{AppCmd, KeyCmd, RoomCmd, RoomSet, TokenCmd};
use crate::error::{CtlError, Result};
use crate::output::{print_json, Output};
use crate::table::{self, cell, field};

/// One of the WebRTC commands.
#[derive(Debug)]
pub enum WebRtcCommand<'a> {
    App(&'a AppCmd),
    Key(&'a KeyCmd),
    Room(&'a RoomCmd),
    Token(&'a TokenCmd),
}

/// A validated request: method, path, body.
pub struct Prepared {
    method: &'static str,
    path: String,
    body: Option<Value>,
    what: What,
}

enum What {
    Apps,
    AppAdded,
    Keys,
    KeyAdded,
    Rooms,
    Room,
    Token,
    Done,
}

fn name(what: &str, s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(CtlError::usage(format!(
            "{what} `{s}`: 1..=64 of A-Z a-z 0-9 - _ ."
        )))
    }
}

/// Validate a command before control is contacted.
pub fn prepare(cmd: WebRtcCommand<'_>) -> Result<Prepared> {
    match cmd {
        WebRtcCommand::App(c) => prepare_app(c),
        WebRtcCommand::Key(c) => prepare_key(c),
        WebRtcCommand::Room(c) => prepare_room(c),
        WebRtcCommand::Token(c) => prepare_token(c),
    }
}

fn request(method: &'static str, path: String, body: Option<Value>, what: What) -> Prepared {
    Prepared {
        method,
        path,
        body,
        what,
    }
}

fn app_id(s: &str) -> Result<String> {
    name("application id", s)
}

fn prepare_app(cmd: &AppCmd) -> Result<Prepared> {
    Ok(match cmd {
        AppCmd::List => request("GET", "/v1/apps".into(), None, What::Apps),
        AppCmd::Add { id } => request(
            "POST",
            "/v1/apps".into(),
            Some(json!({"id": app_id(id)?})),
            What::AppAdded,
        ),
        AppCmd::Del { id } => request(
            "DELETE",
            format!("/v1/apps/{}", app_id(id)?),
            None,
            What::Done,
        ),
    })
}

fn prepare_key(cmd: &KeyCmd) -> Result<Prepared> {
    Ok(match cmd {
        KeyCmd::List { app } => request(
            "GET",
            format!("/v1/apps/{}/keys", app_id(app)?),
            None,
            What::Keys,
        ),
        KeyCmd::Add { app, kid, secret } => {
            let mut body = json!({});
            if let Some(k) = kid {
                body["kid"] = json!(name("key id", k)?);
            }
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            request(
                "POST",
                format!("/v1/apps/{}/keys", app_id(app)?),
                Some(body),
                What::KeyAdded,
            )
        }
        KeyCmd::Del { app, kid } => request(
            "DELETE",
            format!("/v1/apps/{}/keys/{}", app_id(app)?, name("key id", kid)?),
            None,
            What::Done,
        ),
    })
}

fn room_path(app: &str, room: &str) -> Result<String> {
    Ok(format!(
        "/v1/rooms/{}/{}",
        app_id(app)?,
        name("room", room)?
    ))
}

fn prepare_room(cmd: &RoomCmd) -> Result<Prepared> {
    Ok(match cmd {
        RoomCmd::List => request("GET", "/v1/rooms".into(), None, What::Rooms),
        RoomCmd::Show { app, room } => request("GET", room_path(app, room)?, None, What::Room),
        RoomCmd::Set(s) => request(
            "POST",
            room_path(&s.app, &s.room)?,
            Some(json!({ "policy": room_policy(s)? })),
            What::Room,
        ),
        RoomCmd::Del { app, room } => request("DELETE", room_path(app, room)?, None, What::Done),
    })
}

/// The policy object of `room set`, or null (the application's default) when no policy flag
/// was given.
fn room_policy(s: &RoomSet) -> Result<Value> {
    let custom = !s.email_domains.is_empty()
        || !s.accept.is_empty()
        || s.stream_password.is_some()
        || s.stream_timeout.is_some()
        || s.bind_ip;
    if !custom {
        return Ok(Value::Null);
    }
    for k in &s.accept {
        if k != "signed" && k != "stream" {
            return Err(CtlError::usage(format!("--accept `{k}`: signed or stream")));
        }
    }
    let accept = if s.accept.is_empty() {
        vec!["signed".to_string()]
    } else {
        s.accept.clone()
    };
    Ok(json!({
        "allowed_email_domains": s.email_domains,
        "accepted_token_kinds": accept,
        "stream_password": s.stream_password,
        "stream_timeout_minutes": s.stream_timeout.unwrap_or(5),
        "bind_ip": s.bind_ip,
    }))
}

fn prepare_token(cmd: &TokenCmd) -> Result<Prepared> {
    let TokenCmd::Mint {
        app,
        room,
        role,
        ttl,
        email,
        sub,
    } = cmd;
    if !["host", "speaker", "moderator", "viewer"].contains(&role.as_str()) {
        return Err(CtlError::usage(format!(
            "--role `{role}`: host, speaker, moderator or viewer"
        )));
    }
    let mut body = json!({
        "app": app_id(app)?,
        "room": name("room", room)?,
        "role": role,
    });
    if let Some(t) = ttl {
        if *t == 0 || *t > 86_400 {
            return Err(CtlError::usage("--ttl: 1..=86400 seconds"));
        }
        body["ttl_secs"] = json!(t);
    }
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    if let Some(s) = sub {
        body["sub"] = json!(s);
    }
    Ok(request(
        "POST",
        "/v1/tokens".into(),
        Some(body),
        What::Token,
    ))
}

/// Call control and print the result.
pub fn execute(client: &Client, p: Prepared, out: Output) -> Result<()> {
    let v = match (p.method, &p.body) {
        ("GET", _) => client.get(&p.path)?,
        ("DELETE", _) => client.delete(&p.path)?,
        (_, Some(b)) => client.post(&p.path, b)?,
        (_, None) => client.post(&p.path, &json!({}))?,
    };
    if out == Output::Json {
        let ok = json!({"ok": true});
        print_json(if v.is_null() { &ok } else { &v });
        return Ok(());
    }
    let empty = Vec::new();
    match p.what {
        What::Apps => {
            let rows: Vec<Vec<String>> = v["apps"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|a| {
                    let keys: Vec<String> = a["keys"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .map(|k| k.as_str().unwrap_or_default().to_string())
                        .collect();
                    vec![field(a, "id"), keys.join(","), cell(a.get("rooms"))]
                })
                .collect();
            print!("{}", table::render(&["APP", "KEYS", "ROOMS"], &rows));
        }
        What::AppAdded => {
            println!(
                "application {} created; developer key {} (shown once):\n{}",
                field(&v, "id"),
                field(&v["key"], "kid"),
                field(&v["key"], "secret")
            );
        }
        What::Keys => {
            let rows: Vec<Vec<String>> = v["keys"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|k| vec![field(k, "kid"), cell(k.get("created_unix"))])
                .collect();
            print!("{}", table::render(&["KID", "CREATED_UNIX"], &rows));
        }
        What::KeyAdded => println!("{}", field(&v, "secret")),
        What::Rooms => {
            let rows: Vec<Vec<String>> = v["rooms"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| {
                    vec![
                        field(r, "app"),
                        field(r, "room"),
                        cell(r.get("members")),
                        policy_text(&r["policy"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["APP", "ROOM", "MEMBERS", "POLICY"], &rows)
            );
        }
        What::Room => {
            println!(
                "room {}/{}  policy: {}",
                field(&v, "app"),
                field(&v, "room"),
                policy_text(&v["policy"])
            );
            let rows: Vec<Vec<String>> = v["members"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|m| vec![cell(m.get("session")), field(m, "kind"), field(m, "role")])
                .collect();
            if !rows.is_empty() {
                print!("{}", table::render(&["SESSION", "KIND", "ROLE"], &rows));
            }
        }
        What::Token => println!("{}", field(&v, "token")),
        What::Done => println!("ok"),
    }
    Ok(())
}

fn policy_text(p: &Value) -> String {
    let kinds: Vec<&str> = p["accepted_token_kinds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let domains: Vec<&str> = p["allowed_email_domains"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut s = format!("tokens={}", kinds.join("+"));
    if !domains.is_empty() {
        s.push_str(&format!(" viewer-domains={}", domains.join(",")));
    }
    if p["bind_ip"].as_bool() == Some(true) {
        s.push_str(" bind-ip");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_mint_validates_before_contacting_control() {
        let bad_role = TokenCmd::Mint {
            app: "demo".into(),
            room: "blue".into(),
            role: "admin".into(),
            ttl: None,
            email: None,
            sub: None,
        };
        assert!(prepare(WebRtcCommand::Token(&bad_role)).is_err());
        let ok = TokenCmd::Mint {
            app: "demo".into(),
            room: "blue".into(),
            role: "viewer".into(),
            ttl: Some(60),
            email: Some("a@example.com".into()),
            sub: None,
        };
        let p = prepare(WebRtcCommand::Token(&ok)).unwrap();
        assert_eq!(p.path, "/v1/tokens");
        let b = p.body.unwrap();
        assert_eq!(b["ttl_secs"], 60);
        assert_eq!(b["email"], "a@example.com");
        let bad_room = RoomCmd::Show {
            app: "demo".into(),
            room: "a/b".into(),
        };
        assert!(prepare(WebRtcCommand::Room(&bad_room)).is_err());
    }
}
