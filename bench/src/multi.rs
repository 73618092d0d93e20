//! `--targets`: several Sluice nodes (a cluster's, or independent ones) driven as one target,
//! with figures per node.
//!
//! Owns: [`MultiTarget`], which spreads a [`Plan`] over the nodes (publisher `i` and all its
//! subscribers on node `i mod N`, each node through its own admin API), and
//! [`per_node`], which sums a run's per-stream figures by node. May not touch: media
//! sockets, packets (the generator runs as for one target: every publisher sends to its
//! node's relay, every subscriber receives from it).
//!
//! Latency percentiles come from one histogram for the whole run; per node the report gives
//! throughput and loss.

use crate::report::{Report, RunResult};
use crate::target::{Plan, SluiceTarget, Target, TargetError, TargetInfo, Wiring};
use serde_json::Value;

/// Several Sluice nodes as one target.
pub struct MultiTarget {
    nodes: Vec<SluiceTarget>,
    urls: Vec<String>,
}

impl MultiTarget {
    /// Connect to every admin URL of `urls`, with the token at the same place in `tokens`
    /// (or the one token for all).
    pub fn connect(urls: &[String], tokens: &[String]) -> Result<MultiTarget, TargetError> {
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
        })
    }
}

/// The node publisher `i` (and its subscribers) is placed on, among `n`.
pub fn node_of(publisher: usize, n: usize) -> usize {
    publisher % n.max(1)
}

impl Target for MultiTarget {
    fn create(&mut self, plan: &Plan) -> Result<Wiring, TargetError> {
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

    /// Each node's `GET /v1/stats`, by admin URL.
    fn stats(&mut self) -> Option<Value> {
        let mut out = serde_json::Map::new();
        for (url, node) in self.urls.iter().zip(&mut self.nodes) {
            out.insert(url.clone(), node.stats().unwrap_or(Value::Null));
        }
        Some(Value::Object(out))
    }
}

/// One node's share of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFigures {
    pub node: String,
    pub publishers: u64,
    pub subscribers: u64,
    /// Datagrams the publishers sent to this node.
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Delivered datagrams per second of the send window.
    pub delivered_pps: f64,
    pub loss_ratio: f64,
}

/// `result`'s per-stream figures summed per node of `urls` (stream `i` is publisher `i`).
pub fn per_node(result: &RunResult, urls: &[String]) -> Vec<NodeFigures> {
    let mut out: Vec<NodeFigures> = urls
        .iter()
        .map(|u| NodeFigures {
            node: u.clone(),
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
    for f in &mut out {
        if result.duration_s > 0.0 {
            f.delivered_pps = f.delivered as f64 / result.duration_s;
        }
        if f.expected > 0 {
            f.loss_ratio = f.lost as f64 / f.expected as f64;
        }
    }
    out
}

/// The per-node table printed after a run's report.
pub fn per_node_text(report: &Report, urls: &[String]) -> String {
    let Some(r) = &report.result else {
        return String::new();
    };
    let mut o = String::from("\nper node:\n");
    o.push_str(&format!(
        "{:<32} {:>4} {:>6} {:>12} {:>12} {:>12} {:>10}\n",
        "NODE", "PUBS", "SUBS", "SENT", "DELIVERED", "PPS", "LOSS%"
    ));
    for f in per_node(r, urls) {
        o.push_str(&format!(
            "{:<32} {:>4} {:>6} {:>12} {:>12} {:>12.0} {:>10.4}\n",
            f.node,
            f.publishers,
            f.subscribers,
            f.sent,
            f.delivered,
            f.delivered_pps,
            f.loss_ratio * 100.0
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
    use crate::report::StreamReport;

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
        let r = RunResult {
            duration_s: 2.0,
            streams: vec![s(0, 100, 2, 200), s(1, 100, 3, 290), s(2, 50, 2, 100)],
            ..RunResult::default()
        };
        let f = per_node(&r, &urls);
        assert_eq!(
            (f[0].publishers, f[0].subscribers, f[0].delivered),
            (2, 4, 300)
        );
        assert_eq!((f[1].publishers, f[1].subscribers, f[1].lost), (1, 3, 10));
        assert!((f[0].delivered_pps - 150.0).abs() < 1e-9);
        assert!((f[1].loss_ratio - 10.0 / 300.0).abs() < 1e-9);
        assert_eq!(node_of(5, 3), 2);
    }
}
