//! `--targets`: several Sluice nodes (a cluster's, or independent ones) driven as one target,
//! with figures per node.
//!
//! Owns: [`MultiTarget`], which spreads a [`Plan`] over the nodes (publisher `i` and all its
//! subscribers on node `i mod N`, each node through its own admin API; with `--cascade` every
//! publisher on the first node, the origin, and the subscribers of publisher `i` on node
//! `i mod N`, fed from the origin over one static trunk per other node), and
//! [`per_node`], which sums a run's per-stream figures by node. May not touch: media
//! sockets, packets (the generator runs as for one target: every publisher sends to its
//! node's relay, every subscriber receives from it).
//!
//! Per node the report gives throughput, loss, latency (the generator keeps one histogram
//! per node, [`crate::gen::RigSpec::latency_groups`]) and the relay's CPU per delivered
//! packet (its control's `process_cpu_seconds_total{process="relay"}`, read before and after
//! the measured step with each node's statistics).

use crate::report::{Latency, NodeFigures, Report};
use crate::target::{Plan, SluiceTarget, Target, TargetError, TargetInfo, Wiring};
use serde_json::{json, Value};

/// Several Sluice nodes as one target.
pub struct MultiTarget {
    nodes: Vec<SluiceTarget>,
    urls: Vec<String>,
    /// Publishers on the first node only, the other nodes fed over trunks.
    cascade: bool,
}

impl MultiTarget {
    /// Connect to every admin URL of `urls`, with the token at the same place in `tokens`
    /// (or the one token for all).
    /// With `cascade`, every publisher is on the first node and each other node takes its
    /// streams over a trunk ([`MultiTarget::create_cascade`]).
    pub fn connect(
        urls: &[String],
        tokens: &[String],
        cascade: bool,
    ) -> Result<MultiTarget, TargetError> {
        if urls.is_empty() {
            return Err(TargetError::Discovery("--targets names no node".into()));
        }
        if !(tokens.len() == 1 || tokens.len() == urls.len()) {
            return Err(TargetError::Discovery(format!(
                "--tokens: give one token for all nodes or one per node ({} nodes, {} tokens)",
                urls.len(),
                tokens.len()
            )));
        }
        let nodes = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let t = tokens.get(i).unwrap_or(&tokens[0]);
                SluiceTarget::connect(Some(u), Some(t), None)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MultiTarget {
            nodes,
            urls: urls.to_vec(),
            cascade,
        })
    }

    /// `--cascade`: every publisher's session on the origin (node 0) and, for each other node
    /// `k`, one static trunk from the origin's relay to node `k`'s: a `trunk`-role session on
    /// each side (peer: the other relay's media address; fresh keys, what one encrypts with
    /// the other decrypts with), a route on the origin from each publisher placed on `k`
    /// into the trunk, and on `k` the publisher's subscribers routed from the trunk by the
    /// publisher's SSRC. The same sessions and routes as a trunk the nodes open for WebRTC
    /// viewers (docs/CLUSTER.md "Cascade"), made through the admin API.
    fn create_cascade(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        let n = self.nodes.len();
        let profile = plan.profile.name();
        let origin_media = self.nodes[0].media_addr()?;
        let mut pub_ids = Vec::with_capacity(plan.publishers.len());
        for (i, p) in plan.publishers.iter().enumerate() {
            let body = json!({"peer": p.peer.to_string(), "profile": profile,
                "rx_key": p.rx_key.to_base64(), "tx_key": p.tx_key.to_base64()});
            pub_ids
                .push(self.nodes[0].add_session(&format!("create publisher session {i}"), &body)?);
        }
        // The session each node's subscribers are routed from, per publisher: the publisher
        // itself on the origin, the trunk elsewhere.
        let mut source: Vec<Option<u64>> = vec![None; plan.publishers.len()];
        for (i, s) in source.iter_mut().enumerate() {
            if node_of(i, n) == 0 {
                *s = Some(pub_ids[i]);
            }
        }
        for k in 1..n {
            let placed: Vec<usize> = (0..plan.publishers.len())
                .filter(|&i| node_of(i, n) == k)
                .collect();
            if placed.is_empty() {
                continue;
            }
            let edge_media = self.nodes[k].media_addr()?;
            let (down, up) = (
                crate::gen::random_key(plan.profile),
                crate::gen::random_key(plan.profile),
            );
            let origin_side = json!({"peer": edge_media.to_string(), "profile": profile,
                "role": "trunk", "rx_key": up.to_base64(), "tx_key": down.to_base64()});
            let edge_side = json!({"peer": origin_media.to_string(), "profile": profile,
                "role": "trunk", "rx_key": down.to_base64(), "tx_key": up.to_base64()});
            let to_edge =
                self.nodes[0].add_session(&format!("create trunk to node {k}"), &origin_side)?;
            let from_origin =
                self.nodes[k].add_session("create trunk from the origin", &edge_side)?;
            for &i in &placed {
                let ssrc = *plan
                    .publisher_ssrcs
                    .get(i)
                    .ok_or(TargetError::Missing("a publisher's SSRC"))?;
                let body = json!({"from": pub_ids[i], "to": to_edge, "ssrc": ssrc});
                self.nodes[0].add_route(&format!("route publisher {i} into trunk {k}"), &body)?;
                source[i] = Some(from_origin);
            }
        }
        let mut subscriber_keys = Vec::with_capacity(plan.subscribers.len());
        for (j, (s, from)) in plan.subscribers.iter().enumerate() {
            let k = node_of(*from, n);
            let src = source
                .get(*from)
                .copied()
                .flatten()
                .ok_or(TargetError::Missing("publisher"))?;
            let body = json!({"peer": s.peer.to_string(), "profile": profile,
                "rx_key": s.rx_key.to_base64(), "tx_key": s.tx_key.to_base64()});
            let id = self.nodes[k].add_session(&format!("create subscriber session {j}"), &body)?;
            let ssrc = plan.publisher_ssrcs.get(*from).copied();
            let route = match (k, ssrc) {
                (0, _) | (_, None) => json!({"from": src, "to": id}),
                (_, Some(ssrc)) => json!({"from": src, "to": id, "ssrc": ssrc}),
            };
            self.nodes[k].add_route(&format!("create route to subscriber {j}"), &route)?;
            subscriber_keys.push(s.tx_key);
        }
        Ok(Wiring {
            publisher_dst: vec![origin_media; plan.publishers.len()],
            subscriber_keys,
            publisher_keys: Vec::new(),
        })
    }
}

/// The node publisher `i` (and its subscribers) is placed on, among `n`.
pub fn node_of(publisher: usize, n: usize) -> usize {
    publisher % n.max(1)
}

impl Target for MultiTarget {
    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
        if self.cascade {
            return self.create_cascade(plan);
        }
        let n = self.nodes.len();
        let mut publisher_dst = vec![None; plan.publishers.len()];
        let mut subscriber_keys = vec![None; plan.subscribers.len()];
        for (k, node) in self.nodes.iter_mut().enumerate() {
            // This node's share, with publisher indices renumbered from 0.
            let pubs: Vec<usize> = (0..plan.publishers.len())
                .filter(|&i| node_of(i, n) == k)
                .collect();
            let subs: Vec<usize> = (0..plan.subscribers.len())
                .filter(|&j| node_of(plan.subscribers[j].1, n) == k)
                .collect();
            let sub_plan = Plan {
                profile: plan.profile,
                publishers: pubs.iter().map(|&i| plan.publishers[i]).collect(),
                publisher_ssrcs: pubs
                    .iter()
                    .filter_map(|&i| plan.publisher_ssrcs.get(i).copied())
                    .collect(),
                subscribers: subs
                    .iter()
                    .map(|&j| {
                        let (s, from) = plan.subscribers[j];
                        let local = pubs.iter().position(|&i| i == from).unwrap_or(0);
                        (s, local)
                    })
                    .collect(),
            };
            if sub_plan.publishers.is_empty() {
                continue;
            }
            let w = node.create(&sub_plan)?;
            for (local, &i) in pubs.iter().enumerate() {
                publisher_dst[i] = w.publisher_dst.get(local).copied();
            }
            for (local, &j) in subs.iter().enumerate() {
                subscriber_keys[j] = w.subscriber_keys.get(local).copied();
            }
        }
        Ok(Wiring {
            publisher_dst: publisher_dst
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or(TargetError::Missing("a publisher's media address"))?,
            subscriber_keys: subscriber_keys
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or(TargetError::Missing("a subscriber's key"))?,
            // Static sessions on every node: publishers encrypt with their planned keys.
            publisher_keys: Vec::new(),
        })
    }

    fn info(&mut self) -> Result<TargetInfo, TargetError> {
        let infos = self
            .nodes
            .iter_mut()
            .map(Target::info)
            .collect::<Result<Vec<_>, _>>()?;
        let join = |f: &dyn Fn(&TargetInfo) -> Option<String>| {
            Some(
                infos
                    .iter()
                    .map(|i| f(i).unwrap_or_else(|| "-".into()))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        };
        Ok(TargetInfo {
            kind: format!("sluice x{}", infos.len()),
            media_addr: join(&|i| i.media_addr.clone()),
            admin_url: join(&|i| i.admin_url.clone()),
            backend: join(&|i| i.backend.clone()),
            workers: Some(infos.iter().filter_map(|i| i.workers).sum()),
            relay_pid: None,
            version: infos.first().and_then(|i| i.version.clone()),
        })
    }

    fn teardown(&mut self) -> Result<usize, TargetError> {
        let mut removed = 0;
        let mut first_err = None;
        for node in &mut self.nodes {
            match node.teardown() {
                Ok(n) => removed += n,
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

    /// Each node's `GET /v1/stats`, by admin URL, with `relay_cpu_seconds` added (the relay's
    /// CPU time as its control reports it; null when it does not).
    fn stats(&mut self) -> Option<Value> {
        let mut out = serde_json::Map::new();
        for (url, node) in self.urls.iter().zip(&mut self.nodes) {
            let mut v = match node.stats() {
                Some(Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            v.insert(
                RELAY_CPU_KEY.into(),
                node.relay_cpu_seconds().map_or(Value::Null, Value::from),
            );
            out.insert(url.clone(), Value::Object(v));
        }
        Some(Value::Object(out))
    }
}

/// Where [`MultiTarget`]'s statistics put each node's relay CPU seconds.
const RELAY_CPU_KEY: &str = "relay_cpu_seconds";

/// `report`'s per-stream figures summed per node of `urls` (stream `i` is publisher `i`),
/// with each node's latency and relay CPU when the report has them.
pub fn per_node(report: &Report, urls: &[String]) -> Vec<NodeFigures> {
    let Some(result) = &report.result else {
        return Vec::new();
    };
    let mut out: Vec<NodeFigures> = urls
        .iter()
        .enumerate()
        .map(|(k, u)| NodeFigures {
            node: u.clone(),
            // One node: its latency is the run's (the generator keeps no groups for one).
            latency: match (result.group_latency.get(k), urls.len()) {
                (Some(l), _) => *l,
                (None, 1) => result.latency,
                (None, _) => Latency::default(),
            },
            ..NodeFigures::default()
        })
        .collect();
    for s in &result.streams {
        let Some(f) = out.get_mut(node_of(s.stream as usize, urls.len())) else {
            continue;
        };
        f.publishers += 1;
        f.subscribers += s.subscribers;
        f.sent += s.sent;
        f.expected += s.expected;
        f.delivered += s.delivered;
        f.lost += s.lost;
    }
    let cpu = |v: &Option<Value>, url: &str| {
        v.as_ref()
            .and_then(|v| v.get(url))
            .and_then(|n| n.get(RELAY_CPU_KEY))
            .and_then(Value::as_f64)
    };
    for f in &mut out {
        if result.duration_s > 0.0 {
            f.delivered_pps = f.delivered as f64 / result.duration_s;
        }
        if f.expected > 0 {
            f.loss_ratio = f.lost as f64 / f.expected as f64;
        }
        if let Some(ts) = &report.target_stats {
            if let (Some(a), Some(b)) = (cpu(&ts.before, &f.node), cpu(&ts.after, &f.node)) {
                let used = (b - a).max(0.0);
                f.relay_cpu_s = Some(used);
                if f.delivered > 0 {
                    f.relay_cpu_ns_per_delivered = Some(used * 1e9 / f.delivered as f64);
                }
            }
        }
    }
    out
}

/// The per-node table printed after a run's report ([`Report::nodes`]).
pub fn per_node_text(report: &Report) -> String {
    let Some(r) = &report.result else {
        return String::new();
    };
    let mut o = String::from("\nper node:\n");
    o.push_str(&format!(
        "{:<32} {:>4} {:>6} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>12}\n",
        "NODE",
        "PUBS",
        "SUBS",
        "SENT",
        "DELIVERED",
        "PPS",
        "LOSS%",
        "P50_US",
        "P99_US",
        "RELAY_NS/PKT"
    ));
    for f in &report.nodes {
        o.push_str(&format!(
            "{:<32} {:>4} {:>6} {:>12} {:>12} {:>12.0} {:>10.4} {:>10.1} {:>10.1} {:>12}\n",
            f.node,
            f.publishers,
            f.subscribers,
            f.sent,
            f.delivered,
            f.delivered_pps,
            f.loss_ratio * 100.0,
            f.latency.p50_us,
            f.latency.p99_us,
            f.relay_cpu_ns_per_delivered
                .map_or_else(|| "-".to_string(), |n| format!("{n:.0}"))
        ));
    }
    o.push_str(&format!(
        "latency (all nodes): p50 {:.1} us, p99 {:.1} us, max {:.1} us\n",
        r.latency.p50_us, r.latency.p99_us, r.latency.max_us
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{RunResult, StreamReport, TargetStats};
    use serde_json::json;

    #[test]
    fn streams_are_summed_by_node() {
        let urls: Vec<String> = ["http://a", "http://b"].map(String::from).to_vec();
        let s = |stream, sent, subs, delivered| StreamReport {
            stream,
            sent,
            subscribers: subs,
            expected: sent * subs,
            delivered,
            lost: sent * subs - delivered,
            ..StreamReport::default()
        };
        let lat = |p50_us| Latency {
            p50_us,
            ..Latency::default()
        };
        let report = Report {
            result: Some(RunResult {
                duration_s: 2.0,
                streams: vec![s(0, 100, 2, 200), s(1, 100, 3, 290), s(2, 50, 2, 100)],
                group_latency: vec![lat(10.0), lat(20.0)],
                ..RunResult::default()
            }),
            target_stats: Some(TargetStats {
                before: Some(json!({"http://a": {"relay_cpu_seconds": 1.0},
                    "http://b": {"relay_cpu_seconds": null}})),
                after: Some(json!({"http://a": {"relay_cpu_seconds": 1.3},
                    "http://b": {"relay_cpu_seconds": 2.0}})),
            }),
            ..Report::default()
        };
        let f = per_node(&report, &urls);
        assert_eq!(
            (f[0].publishers, f[0].subscribers, f[0].delivered),
            (2, 4, 300)
        );
        assert_eq!((f[1].publishers, f[1].subscribers, f[1].lost), (1, 3, 10));
        assert!((f[0].delivered_pps - 150.0).abs() < 1e-9);
        assert!((f[1].loss_ratio - 10.0 / 300.0).abs() < 1e-9);
        assert_eq!((f[0].latency.p50_us, f[1].latency.p50_us), (10.0, 20.0));
        // 0.3 CPU-s for 300 delivered: 1 ms each; b's first reading is missing.
        let per = f[0].relay_cpu_ns_per_delivered.expect("a's CPU per packet");
        assert!((per - 1e6).abs() < 1.0, "{per}");
        assert_eq!(
            (f[1].relay_cpu_s, f[1].relay_cpu_ns_per_delivered),
            (None, None)
        );
        assert_eq!(node_of(5, 3), 2);
    }

    #[test]
    fn one_node_has_the_runs_latency() {
        let report = Report {
            result: Some(RunResult {
                latency: Latency {
                    p50_us: 7.0,
                    ..Latency::default()
                },
                ..RunResult::default()
            }),
            ..Report::default()
        };
        let f = per_node(&report, &["http://a".to_string()]);
        assert_eq!(f[0].latency.p50_us, 7.0);
    }
}
