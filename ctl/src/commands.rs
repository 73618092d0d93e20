//! The admin commands: validate locally, call the API, print a table or JSON.
//!
//! Owns: what each command prints on stdout. May not touch: process spawning (see [`crate::up`]).

use serde_json::{json, Value};

use crate::api::Client;
use crate::cli::{ClusterCmd, Command, RouteCmd, SessionCmd};
use crate::discovery::Endpoint;
use crate::error::{CtlError, Result, EXIT_DOWN};
use crate::output::{print_json, Output};
use crate::supervise::UpState;
use crate::table::{self, cell, field};
use crate::up::relay_up;
use crate::validate;

/// Build the request for a command that needs control. Validation happens here, before
/// discovery, so a bad value is reported even when control is not running.
pub enum Request {
    Status,
    Stats,
    Streams,
    ClusterStatus,
    Sessions,
    SessionList,
    SessionShow(u64),
    SessionLayer(u64, Value),
    Routes,
    SessionAdd(Value),
    SessionDel(u64),
    RouteAdd(Vec<Value>),
    RouteDel(u64),
    Drain,
    Undrain,
    Rekey(u64, Value),
}

pub fn prepare(cmd: &Command) -> Result<Request> {
    Ok(match cmd {
        Command::Status => Request::Status,
        Command::Stats { streams: false } => Request::Stats,
        Command::Stats { streams: true } => Request::Streams,
        Command::Cluster(ClusterCmd::Status) => Request::ClusterStatus,
        Command::Sessions => Request::Sessions,
        Command::Routes => Request::Routes,
        Command::Drain => Request::Drain,
        Command::Undrain => Request::Undrain,
        Command::Session(SessionCmd::Add {
            peer,
            ice_remote_ufrag,
            ice_ufrag,
            ice_pwd,
            profile,
            rx_key,
            tx_key,
            role,
            max_pps,
        }) => {
            let profile = validate::profile(profile)?;
            let rx = validate::key("--rx-key", profile, rx_key)?;
            let tx = validate::key("--tx-key", profile, tx_key)?;
            let mut body = json!({
                "profile": profile.name(),
                "rx_key": rx.to_base64(),
                "tx_key": tx.to_base64(),
            });
            if let Some(p) = peer {
                body["peer"] = json!(validate::peer(p)?.to_string());
            }
            if let Some(remote) = ice_remote_ufrag {
                let mut ice = json!({ "remote_ufrag": remote });
                if let (Some(u), Some(p)) = (ice_ufrag, ice_pwd) {
                    ice["ufrag"] = json!(u);
                    ice["pwd"] = json!(p);
                }
                body["ice"] = ice;
            }
            if let Some(r) = role {
                body["role"] = json!(validate::role(r)?.name());
            }
            if let Some(n) = max_pps {
                body["max_pps"] = json!(n);
            }
            Request::SessionAdd(body)
        }
        Command::Session(SessionCmd::Del { id }) => Request::SessionDel(*id),
        Command::Session(SessionCmd::List) => Request::SessionList,
        Command::Session(SessionCmd::Show { id }) => Request::SessionShow(*id),
        Command::Session(SessionCmd::Layer {
            id,
            max,
            max_temporal,
        }) => {
            // `none` or a number below `limit`, else a usage error naming the option.
            let cap = |opt: &str, v: &str, limit: u8| -> Result<Value> {
                match v {
                    "none" => Ok(Value::Null),
                    m => match m.parse::<u8>() {
                        Ok(n) if n < limit => Ok(json!(n)),
                        _ => Err(CtlError::usage(format!(
                            "{opt}: {m:?} is not a layer 0-{} or `none`",
                            limit - 1
                        ))),
                    },
                }
            };
            let max = cap("--max", max, contract::shm::MAX_LAYERS)?;
            let temporal = match max_temporal {
                Some(t) => cap("--max-temporal", t, contract::shm::Layer::MAX_TEMPORAL + 1)?,
                None => Value::Null,
            };
            Request::SessionLayer(*id, json!({ "max": max, "max_temporal": temporal }))
        }
        Command::Route(RouteCmd::Add {
            from,
            ssrc,
            to,
            rewrite_ssrc,
            pt,
            rtx_pt,
            rtx_ssrc,
            source_rtx_pt,
            source_rtx_ssrc,
            twcc_id,
            layers,
            max_layer,
        }) => {
            let pt_map = validate::pt_map(pt)?;
            let mut body = json!({ "from": from, "to": to });
            if let Some(s) = ssrc {
                body["ssrc"] = json!(s);
            }
            let rtx = match (rtx_pt, rtx_ssrc) {
                (Some(p), Some(s)) => {
                    if *p > 127 {
                        return Err(CtlError::usage("--rtx-pt: a payload type is 0..=127"));
                    }
                    if ssrc.is_none() && rewrite_ssrc.is_none() {
                        return Err(CtlError::usage(
                            "--rtx-pt: RTX needs a single-stream route (--ssrc or --rewrite-ssrc)",
                        ));
                    }
                    Some(json!({ "payload_type": p, "ssrc": s }))
                }
                _ => None,
            };
            let source_rtx = match (source_rtx_pt, source_rtx_ssrc) {
                (Some(p), Some(s)) => {
                    if *p > 127 {
                        return Err(CtlError::usage(
                            "--source-rtx-pt: a payload type is 0..=127",
                        ));
                    }
                    if ssrc.is_none() {
                        return Err(CtlError::usage(
                            "--source-rtx-pt: the publisher's RTX repairs one stream (give --ssrc)",
                        ));
                    }
                    Some(json!({ "payload_type": p, "ssrc": s }))
                }
                _ => None,
            };
            if *twcc_id == Some(0) {
                return Err(CtlError::usage("--twcc-id: an extension id is 1..=255"));
            }
            if rewrite_ssrc.is_some()
                || !pt_map.is_empty()
                || rtx.is_some()
                || source_rtx.is_some()
                || twcc_id.is_some()
            {
                let mut rw = json!({});
                if let Some(s) = rewrite_ssrc {
                    rw["ssrc"] = json!(s);
                }
                if !pt_map.is_empty() {
                    rw["pt_map"] = json!(pt_map);
                }
                if let Some(x) = rtx {
                    rw["rtx"] = x;
                }
                if let Some(x) = source_rtx {
                    rw["source_rtx"] = x;
                }
                if let Some(id) = twcc_id {
                    rw["twcc_id"] = json!(id);
                }
                body["rewrite"] = rw;
            }
            if layers.is_empty() {
                Request::RouteAdd(vec![body])
            } else {
                Request::RouteAdd(validate::layer_routes(&body, layers, *max_layer)?)
            }
        }
        Command::Route(RouteCmd::Del { id }) => Request::RouteDel(*id),
        Command::Rekey { id, tx_key, rx_key } => {
            if tx_key.is_none() && rx_key.is_none() {
                return Err(CtlError::usage("rekey: give --tx-key, --rx-key or both"));
            }
            let mut body = json!({});
            if let Some(k) = tx_key {
                body["tx_key"] = json!(validate::key_any_profile("--tx-key", k)?);
            }
            if let Some(k) = rx_key {
                body["rx_key"] = json!(validate::key_any_profile("--rx-key", k)?);
            }
            Request::Rekey(*id, body)
        }
        Command::Up { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Srtp(_)
        | Command::Upgrade { .. }
        | Command::App(_)
        | Command::Key(_)
        | Command::Room(_)
        | Command::Token(_) => {
            return Err(CtlError::Other(
                "internal: command does not talk to the admin API".to_string(),
            ))
        }
    })
}

/// Run a prepared request and print its result; returns the exit code (non-zero only for
/// `status` on a relay that is down, [`EXIT_DOWN`]).
pub fn execute(client: &Client, ep: &Endpoint, req: Request, out: Output) -> Result<i32> {
    match req {
        Request::Status => {
            let mut v = client.get("/v1/status")?;
            if let (Some((dir, pid)), Some(obj)) = (&ep.instance, v.as_object_mut()) {
                obj.insert(
                    "instance".into(),
                    json!({"runtime_dir": dir.display().to_string(), "control_pid": pid}),
                );
                if let Some(up) = UpState::read(dir) {
                    obj.insert("supervisor".into(), json!(up));
                }
            }
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", status_text(&v)),
            }
            if !relay_up(&v) {
                return Ok(EXIT_DOWN);
            }
        }
        Request::Stats => {
            let v = client.get("/v1/stats")?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", stats_text(&v)),
            }
        }
        Request::Streams => {
            let v = client.get("/v1/streams")?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", streams_text(&v, true)),
            }
        }
        Request::SessionList => {
            let v = client.get("/v1/sessions")?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", session_list_text(&v)),
            }
        }
        Request::SessionShow(id) => {
            let v = client.get(&format!("/v1/sessions/{id}/stats"))?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", session_show_text(&v)),
            }
        }
        Request::ClusterStatus => {
            let v = client.get("/v1/cluster")?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", cluster_text(&v)),
            }
        }
        Request::Sessions => {
            let v = client.get("/v1/sessions")?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", sessions_text(&v)),
            }
        }
        Request::Routes => {
            let v = client.get("/v1/routes")?;
            match out {
                Output::Json => print_json(&v),
                Output::Human => print!("{}", routes_text(&v)),
            }
        }
        Request::SessionAdd(body) => {
            let v = client
                .post("/v1/sessions", &body)
                .map_err(peer_taken_hint)?;
            print_created(&v, out)?;
        }
        Request::SessionLayer(id, body) => {
            let v = client.put(&format!("/v1/sessions/{id}/layer"), &body)?;
            let routes = v
                .get("routes")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let mut max = match body["max"].as_u64() {
                Some(n) => format!("layer {n}"),
                None => "no cap".to_string(),
            };
            if let Some(t) = body["max_temporal"].as_u64() {
                max.push_str(&format!(", temporal layer {t}"));
            }
            print_done(
                out,
                v,
                &format!("session {id}: {max} on {routes} layered route(s)"),
            );
        }
        Request::RouteAdd(bodies) if bodies.len() == 1 => {
            let v = client.post("/v1/routes", &bodies[0])?;
            print_created(&v, out)?;
        }
        Request::RouteAdd(bodies) => {
            // The layers of one simulcast source: one route each, ids printed in layer order.
            let mut created = Vec::with_capacity(bodies.len());
            for b in &bodies {
                created.push(client.post("/v1/routes", b)?);
            }
            match out {
                Output::Json => print_json(&Value::Array(created)),
                Output::Human => {
                    for v in &created {
                        print_created(v, Output::Human)?;
                    }
                }
            }
        }
        Request::SessionDel(id) => {
            client.delete(&format!("/v1/sessions/{id}"))?;
            print_done(
                out,
                json!({"id": id, "deleted": true}),
                &format!("session {id} deleted"),
            );
        }
        Request::RouteDel(id) => {
            client.delete(&format!("/v1/routes/{id}"))?;
            print_done(
                out,
                json!({"id": id, "deleted": true}),
                &format!("route {id} deleted"),
            );
        }
        Request::Undrain => {
            let v = client.post("/v1/undrain", &json!({}))?;
            let v = if v.is_null() {
                json!({"draining": false})
            } else {
                v
            };
            print_done(out, v, "accepting new sessions and routes again");
        }
        Request::Drain => {
            let v = client.post("/v1/drain", &json!({}))?;
            let v = if v.is_null() {
                json!({"draining": true})
            } else {
                v
            };
            print_done(
                out,
                v,
                "draining: no new sessions or routes; existing media keeps flowing",
            );
        }
        Request::Rekey(id, body) => {
            let v = client.post(&format!("/v1/sessions/{id}/rekey"), &body)?;
            let human = match v.get("key_epoch") {
                Some(e) => format!("session {id} rekeyed (key epoch {})", cell(Some(e))),
                None => format!("session {id} rekeyed"),
            };
            let v = if v.is_null() { json!({"id": id}) } else { v };
            print_done(out, v, &human);
        }
    }
    Ok(0)
}

/// A 409 on `session add` most often meets a newcomer re-running the quick start: control
/// keeps sessions across restarts. Say so, and how to start empty.
fn peer_taken_hint(e: CtlError) -> CtlError {
    match e {
        CtlError::Api {
            status: 409,
            method,
            path,
            msg,
        } if msg.contains("peer address") => CtlError::Api {
            status: 409,
            method,
            path,
            msg: format!(
                "{msg} (control keeps sessions across restarts: `sluicectl sessions` lists them, \
                 `sluicectl session del ID` removes one; `sluicectl up --ephemeral` starts empty)"
            ),
        },
        e => e,
    }
}

/// `session add` / `route add`: the id alone, or the whole object with `--json`.
fn print_created(v: &Value, out: Output) -> Result<()> {
    let id = v
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| CtlError::Other(format!("control's answer has no numeric id: {v}")))?;
    match out {
        Output::Json => print_json(v),
        Output::Human => {
            println!("{id}");
            // A session reached by ICE: the relay's credentials, which the peer needs for its
            // checks (the password is in this answer only).
            let ice = v.get("ice").filter(|i| !i.is_null());
            if let Some(i) = ice {
                let field = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                println!("ice-ufrag {}", field("ufrag"));
                if let Some(p) = i.get("pwd").and_then(Value::as_str) {
                    println!("ice-pwd {p}");
                }
            }
        }
    }
    Ok(())
}

fn print_done(out: Output, v: Value, human: &str) {
    match out {
        Output::Json => print_json(&v),
        Output::Human => println!("{human}"),
    }
}

fn status_text(v: &Value) -> String {
    let relay = v.get("relay").cloned().unwrap_or(Value::Null);
    let relay_line = if relay.is_null() {
        "DOWN (no relay has attached)".to_string()
    } else {
        format!(
            "{} (pid {}, backend {}, {} workers, heartbeat {} ms ago)",
            if relay_up(v) { "up" } else { "DOWN" },
            field(&relay, "pid"),
            field(&relay, "backend"),
            field(&relay, "workers"),
            field(&relay, "heartbeat_age_ms"),
        )
    };
    let instance = match v.get("instance") {
        Some(i) => format!(
            "{} (control pid {})",
            field(i, "runtime_dir"),
            field(i, "control_pid")
        ),
        None => "-".to_string(),
    };
    let supervisor = match v.get("supervisor") {
        Some(u) => format!(
            "sluicectl up (pid {}): control restarted {}, relay restarted {}, relay upgrades adopted {}",
            field(u, "pid"),
            field(u, "control_restarts"),
            field(u, "relay_restarts"),
            field(u, "relay_upgrades")
        ),
        None => "-".to_string(),
    };
    let rows: Vec<(&str, String)> = vec![
        ("instance", instance),
        ("supervisor", supervisor),
        ("version", field(v, "version")),
        ("admin_url", field(v, "admin_url")),
        ("media_addr", field(v, "media_addr")),
        ("public_url", field(v, "public_url")),
        ("metrics_url", field(v, "metrics_url")),
        ("backend", field(v, "backend")),
        ("workers", field(v, "workers")),
        ("relay", relay_line),
        ("sessions", field(v, "sessions")),
        ("routes", field(v, "routes")),
        ("draining", field(v, "draining")),
        ("generation", field(v, "generation")),
    ];
    rows.iter()
        .map(|(k, val)| format!("{k:<12} {val}\n"))
        .collect()
}

fn as_list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `cluster status`: this node, then the nodes and the rooms with their owners.
fn cluster_text(v: &Value) -> String {
    let empty = Vec::new();
    let list = |k: &str| v.get(k).and_then(Value::as_array).unwrap_or(&empty);
    let nodes: Vec<Vec<String>> = list("nodes")
        .iter()
        .map(|n| {
            let load = n.get("load").cloned().unwrap_or(Value::Null);
            vec![
                field(n, "node_id"),
                field(n, "region"),
                field(n, "public_url"),
                field(n, "media_addr"),
                field(&load, "sessions"),
                field(&load, "free_sessions"),
                field(&load, "rooms"),
                field(&load, "packets_per_sec"),
                field(&load, "cpu_percent"),
                table::unix_ms(n.get("heartbeat_ms")),
            ]
        })
        .collect();
    let rooms: Vec<Vec<String>> = list("rooms")
        .iter()
        .map(|r| vec![field(r, "app"), field(r, "room"), field(r, "owner")])
        .collect();
    let trunks: Vec<Vec<String>> = list("trunks")
        .iter()
        .map(|t| {
            let c = t.get("counters").cloned().unwrap_or(Value::Null);
            let rooms: Vec<String> = t
                .get("rooms")
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .iter()
                .map(|r| format!("{}/{}", field(r, "app"), field(r, "room")))
                .collect();
            vec![
                field(t, "side"),
                field(t, "node"),
                field(t, "session"),
                field(t, "peer"),
                rooms.join(","),
                field(t, "viewers"),
                field(&c, "packets_in"),
                field(&c, "packets_out"),
                field(&c, "bytes_out"),
            ]
        })
        .collect();
    let trunk_table = if trunks.is_empty() {
        String::new()
    } else {
        format!(
            "\n{}",
            table::render(
                &[
                    "TRUNK",
                    "NODE",
                    "SESSION",
                    "PEER",
                    "ROOMS",
                    "VIEWERS",
                    "PKTS_IN",
                    "PKTS_OUT",
                    "BYTES_OUT",
                ],
                &trunks,
            )
        )
    };
    format!(
        "node {} (region {}), registry {}\n\n{}\n{}{trunk_table}",
        field(v, "node_id"),
        field(v, "region"),
        field(v, "redis"),
        table::render(
            &[
                "NODE",
                "REGION",
                "PUBLIC_URL",
                "MEDIA",
                "SESSIONS",
                "FREE",
                "ROOMS",
                "PPS",
                "CPU%",
                "HEARTBEAT",
            ],
            &nodes,
        ),
        table::render(&["APP", "ROOM", "OWNER"], &rooms),
    )
}

fn sessions_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = as_list(v)
        .iter()
        .map(|s| {
            vec![
                field(s, "id"),
                field(s, "peer"),
                field(s, "profile"),
                field(s, "role"),
                field(s, "key_epoch"),
                field(s, "flags"),
                field(s, "max_pps"),
                table::unix_ms(s.get("created_unix_ms")),
            ]
        })
        .collect();
    table::render(
        &[
            "ID", "PEER", "PROFILE", "ROLE", "EPOCH", "FLAGS", "MAX_PPS", "CREATED",
        ],
        &rows,
    )
}

/// `app/room`, or `-` for a session outside any room.
fn room_cell(s: &Value) -> String {
    match (
        s.get("app").and_then(Value::as_str),
        s.get("room").and_then(Value::as_str),
    ) {
        (Some(a), Some(r)) => format!("{a}/{r}"),
        _ => "-".to_string(),
    }
}

/// An age in milliseconds as `850ms`, `12.3s`, `4m05s`, `2h03m`; `-` for null (never).
fn age(v: Option<&Value>) -> String {
    let Some(ms) = v.and_then(Value::as_u64) else {
        return "-".to_string();
    };
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The more recent of the last packet in and out, as an age.
fn last_packet_age(stats: &Value) -> String {
    let a = stats.get("last_in_age_ms").and_then(Value::as_u64);
    let b = stats.get("last_out_age_ms").and_then(Value::as_u64);
    match (a, b) {
        (Some(a), Some(b)) => age(Some(&json!(a.min(b)))),
        (Some(x), None) | (None, Some(x)) => age(Some(&json!(x))),
        (None, None) => "-".to_string(),
    }
}

/// `sluicectl session list`.
fn session_list_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = as_list(v)
        .iter()
        .map(|s| {
            let st = s.get("stats").unwrap_or(&Value::Null);
            vec![
                field(s, "id"),
                room_cell(s),
                field(s, "peer"),
                field(s, "profile"),
                field(st, "packets_in"),
                field(st, "packets_out"),
                last_packet_age(st),
                field(st, "state"),
            ]
        })
        .collect();
    table::render(
        &[
            "ID", "APP/ROOM", "PEER", "PROFILE", "PKTS_IN", "PKTS_OUT", "LAST", "STATE",
        ],
        &rows,
    )
}

/// `sluicectl session show ID`: the session and its counters as `key value` lines, then its
/// streams.
fn session_show_text(v: &Value) -> String {
    let st = v.get("stats").unwrap_or(&Value::Null);
    let when = |t: &str, a: &str| match st.get(t).filter(|x| !x.is_null()) {
        Some(x) => format!("{} ({} ago)", table::unix_ms(Some(x)), age(st.get(a))),
        None => "never".to_string(),
    };
    let workers: Vec<String> = as_list(v.get("workers").unwrap_or(&Value::Null))
        .iter()
        .map(|w| cell(Some(w)))
        .collect();
    let rows: Vec<(&str, String)> = vec![
        ("session", field(v, "id")),
        ("state", field(st, "state")),
        ("app/room", room_cell(v)),
        ("peer", field(v, "peer")),
        ("profile", field(v, "profile")),
        ("role", field(v, "role")),
        ("key_epoch", field(v, "key_epoch")),
        ("created", table::unix_ms(v.get("created_unix_ms"))),
        (
            "in",
            format!(
                "{} packets, {} bytes",
                field(st, "packets_in"),
                field(st, "bytes_in")
            ),
        ),
        (
            "out",
            format!(
                "{} packets, {} bytes",
                field(st, "packets_out"),
                field(st, "bytes_out")
            ),
        ),
        ("auth_failures", field(st, "auth_failures")),
        ("replays", field(st, "replays")),
        ("last_in", when("last_in_unix_ms", "last_in_age_ms")),
        ("last_out", when("last_out_unix_ms", "last_out_age_ms")),
        (
            "workers",
            if workers.is_empty() {
                "-".to_string()
            } else {
                workers.join(",")
            },
        ),
    ];
    let mut out: String = rows
        .iter()
        .map(|(k, val)| format!("{k:<14} {val}\n"))
        .collect();
    let streams = v.get("streams").unwrap_or(&Value::Null);
    if as_list(streams).is_empty() {
        out.push_str("streams        none\n");
    } else {
        out.push('\n');
        out.push_str(&streams_text(streams, false));
    }
    out
}

/// A float cell with `digits` decimals; `-` for null.
fn fixed(v: Option<&Value>, digits: usize) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) => format!("{x:.digits$}"),
        None => "-".to_string(),
    }
}

/// Streams with their loss and jitter (`stats --streams`, and `session show` without the
/// session column).
fn streams_text(v: &Value, with_session: bool) -> String {
    let rows: Vec<Vec<String>> = as_list(v)
        .iter()
        .map(|s| {
            let r = s.get("reception").unwrap_or(&Value::Null);
            let loss = r
                .get("loss_fraction")
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |f| format!("{:.2}", f * 100.0));
            let mut row = Vec::new();
            if with_session {
                row.push(field(s, "session"));
            }
            row.extend([
                field(s, "direction"),
                field(s, "ssrc"),
                field(s, "packets"),
                field(s, "bytes"),
                field(r, "expected"),
                field(r, "cumulative_lost"),
                loss,
                fixed(r.get("jitter_ms"), 2),
                field(r, "clock_rate"),
                age(s.get("last_age_ms")),
            ]);
            row.extend(layer_cells(s));
            row
        })
        .collect();
    let mut headers = Vec::new();
    if with_session {
        headers.push("SESSION");
    }
    headers.extend([
        "DIR",
        "SSRC",
        "PKTS",
        "BYTES",
        "EXPECTED",
        "LOST",
        "LOSS_%",
        "JITTER_MS",
        "CLOCK",
        "LAST",
        "EST_KBPS",
        "LAYER",
        "SWITCHES",
        "SWITCH_MS",
    ]);
    table::render(&headers, &rows)
}

/// A sent stream's downlink estimate (kbit/s), simulcast layer (`current/target` of
/// `count`, `-` before the first), layer switches and switch latency (`last/longest` ms);
/// `-` where they do not apply.
fn layer_cells(s: &Value) -> [String; 4] {
    let est = s
        .get("downlink_bps")
        .and_then(Value::as_u64)
        .map_or("-".to_string(), |b| (b / 1000).to_string());
    let Some(l) = s.get("layer").filter(|l| l.is_object()) else {
        return [est, "-".to_string(), "-".to_string(), "-".to_string()];
    };
    let latency = format!(
        "{}/{}",
        field(l, "switch_ms_last"),
        field(l, "switch_ms_max")
    );
    let layer = format!(
        "{}/{} of {}",
        field(l, "current"),
        field(l, "target"),
        field(l, "count")
    );
    [est, layer, field(l, "switches"), latency]
}

fn rewrite_text(rw: Option<&Value>) -> String {
    let Some(rw) = rw.filter(|r| r.is_object()) else {
        return "-".to_string();
    };
    let mut parts = Vec::new();
    if let Some(s) = rw.get("ssrc").filter(|s| !s.is_null()) {
        parts.push(format!("ssrc={}", cell(Some(s))));
    }
    for (key, label) in [("pt_map", "pt"), ("ext_map", "ext")] {
        let pairs: Vec<String> = as_list(rw.get(key).unwrap_or(&Value::Null))
            .iter()
            .map(|p| match p.as_array().map(Vec::as_slice) {
                Some([a, b]) => format!("{}:{}", cell(Some(a)), cell(Some(b))),
                _ => cell(Some(p)),
            })
            .collect();
        if !pairs.is_empty() {
            parts.push(format!("{label}={}", pairs.join(",")));
        }
    }
    for (key, label) in [("rtx", "rtx"), ("source_rtx", "source-rtx")] {
        if let Some(x) = rw.get(key).filter(|x| x.is_object()) {
            parts.push(format!(
                "{label}={}/{}",
                cell(x.get("payload_type")),
                cell(x.get("ssrc"))
            ));
        }
    }
    if let Some(id) = rw.get("twcc_id").filter(|x| !x.is_null()) {
        parts.push(format!("twcc={}", cell(Some(id))));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

fn routes_text(v: &Value) -> String {
    let rows: Vec<Vec<String>> = as_list(v)
        .iter()
        .map(|r| {
            vec![
                field(r, "id"),
                field(r, "from"),
                field(r, "ssrc"),
                field(r, "to"),
                rewrite_text(r.get("rewrite")),
            ]
        })
        .collect();
    table::render(&["ID", "FROM", "SSRC", "TO", "REWRITE"], &rows)
}

fn drops_text(d: Option<&Value>) -> String {
    let Some(obj) = d.and_then(Value::as_object) else {
        return cell(d);
    };
    let total: u64 = obj.values().filter_map(Value::as_u64).sum();
    total.to_string()
}

fn stats_text(v: &Value) -> String {
    let row = |w: &Value, name: String| {
        vec![
            name,
            field(w, "packets_in"),
            field(w, "bytes_in"),
            field(w, "packets_out"),
            field(w, "bytes_out"),
            drops_text(w.get("drops")),
        ]
    };
    let mut rows: Vec<Vec<String>> = as_list(v.get("workers").unwrap_or(&Value::Null))
        .iter()
        .map(|w| row(w, field(w, "worker")))
        .collect();
    let totals = v.get("totals");
    if let Some(t) = totals {
        rows.push(row(t, "total".to_string()));
    }
    let mut out = table::render(
        &[
            "WORKER", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "DROPS",
        ],
        &rows,
    );
    let drops: Vec<Vec<String>> = totals
        .and_then(|t| t.get("drops"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, c)| c.as_u64() != Some(0))
                .map(|(reason, c)| vec![reason.clone(), cell(Some(c))])
                .collect()
        })
        .unwrap_or_default();
    if !drops.is_empty() {
        out.push('\n');
        out.push_str(&table::render(&["DROP_REASON", "COUNT"], &drops));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_table_sums_drops_and_lists_reasons() {
        let v = json!({
            "workers": [
                {"worker": 0, "packets_in": 10, "bytes_in": 1000, "packets_out": 9, "bytes_out": 900,
                 "drops": {"auth_failed": 1, "replayed": 0}},
            ],
            "totals": {"packets_in": 10, "bytes_in": 1000, "packets_out": 9, "bytes_out": 900,
                       "drops": {"auth_failed": 1, "replayed": 0}}
        });
        let t = stats_text(&v);
        assert!(t.contains("total"), "{t}");
        assert!(
            t.contains("DROP_REASON  COUNT\nauth_failed      1\n"),
            "{t}"
        );
        assert!(!t.contains("replayed"), "{t}");
    }

    #[test]
    fn rewrite_cells() {
        assert_eq!(rewrite_text(None), "-");
        assert_eq!(
            rewrite_text(Some(
                &json!({"ssrc": 5, "pt_map": [[96, 100]], "ext_map": []})
            )),
            "ssrc=5 pt=96:100"
        );
    }
}
