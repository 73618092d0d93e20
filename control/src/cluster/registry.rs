//! What the cluster keeps in Redis, and the scripts that change it atomically.
//!
//! Keys (all under `cluster.key_prefix`, `sluice` by default):
//! - `{prefix}:node:{node_id}`: the node's [`NodeInfo`] as JSON, written with a TTL on every
//!   heartbeat, so a node that stops heartbeating leaves the registry by itself;
//! - `{prefix}:room:{app}/{room}`: the id of the node that owns the room, placed with
//!   [`PLACE`] and kept alive by its owner with [`REFRESH`].
//!
//! Nothing secret is stored: no token, key or password.

use serde::{Deserialize, Serialize};

/// One node as the registry shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub region: String,
    /// Where clients send WHIP/WHEP (the node's public URL).
    pub public_url: String,
    /// Where other nodes forward WHIP/WHEP requests for rooms this node owns.
    pub advertise_url: String,
    /// The relay's media address (`IP:PORT`) WebRTC peers reach.
    pub media_addr: String,
    pub load: Load,
    /// Unix time of the heartbeat that wrote this entry, in milliseconds.
    pub heartbeat_ms: u64,
}

/// A node's load, as placement weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Sessions in the shared-memory table.
    pub sessions: u64,
    /// Sessions the table can still take.
    pub free_sessions: u64,
    /// Rooms with at least one participant on this node.
    pub rooms: u64,
    /// Packets the relay forwarded per second over the last heartbeat interval.
    pub packets_per_sec: u64,
    /// Process CPU time over the last heartbeat interval, in percent of one core.
    pub cpu_percent: u32,
}

/// The Redis key names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }
    /// The prefix of every node key (the scripts append a node id).
    pub fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
    pub fn node_pattern(&self) -> String {
        format!("{}:node:*", self.prefix)
    }
    pub fn room(&self, app: &str, room: &str) -> String {
        format!("{}:room:{app}/{room}", self.prefix)
    }
    pub fn room_pattern(&self) -> String {
        format!("{}:room:*", self.prefix)
    }
    /// `(app, room)` from a room key of this cluster.
    pub fn parse_room<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix(":room:")?
            .split_once('/')
    }
}

/// Place a room: the owner stays when its node is alive; otherwise (no owner, or an owner
/// whose registry entry expired) the candidate becomes the owner. One script, so two nodes
/// placing the same room at once get the same answer.
///
/// KEYS[1] the room key; ARGV[1] the candidate, ARGV[2] the TTL in ms, ARGV[3] the node-key
/// prefix. Returns `{owner, 1 if placed now else 0}`.
pub const PLACE: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
  return {owner, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], 1}
";

/// Keep a room this node owns: its TTL renewed when the node still owns it, the entry
/// written again when it vanished (Redis restarted empty, or the TTL ran out while Redis was
/// away). Returns the owner after the call (another node when the room moved meanwhile).
///
/// KEYS[1] the room key; ARGV[1] this node, ARGV[2] the TTL in ms.
pub const REFRESH: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return owner
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return owner
";

/// Give a room up when it is still ours. KEYS[1] the room key; ARGV[1] this node.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Choose where a new room goes, among the live `nodes`: the receiving node's region when a
/// node there is alive, then the most free session capacity, then the fewest packets per
/// second; the receiving node wins a tie (no forwarding). `None` when `nodes` is empty.
pub fn choose<'a>(nodes: &'a [NodeInfo], me: &str, region: &str) -> Option<&'a NodeInfo> {
    let in_region = nodes.iter().any(|n| n.region == region);
    nodes
        .iter()
        .filter(|n| !in_region || n.region == region)
        .max_by(|a, b| {
            a.load
                .free_sessions
                .cmp(&b.load.free_sessions)
                .then(b.load.packets_per_sec.cmp(&a.load.packets_per_sec))
                .then((a.node_id == me).cmp(&(b.node_id == me)))
                .then(b.node_id.cmp(&a.node_id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str, free: u64, pps: u64) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            region: region.into(),
            public_url: String::new(),
            advertise_url: String::new(),
            media_addr: String::new(),
            load: Load {
                free_sessions: free,
                packets_per_sec: pps,
                ..Load::default()
            },
            heartbeat_ms: 0,
        }
    }

    #[test]
    fn placement_prefers_region_then_capacity_then_self() {
        let nodes = [
            node("a", "eu", 10, 0),
            node("b", "eu", 50, 0),
            node("c", "us", 1000, 0),
        ];
        assert_eq!(choose(&nodes, "a", "eu").unwrap().node_id, "b");
        assert_eq!(choose(&nodes, "a", "us").unwrap().node_id, "c");
        // No node in the region: the best anywhere.
        assert_eq!(choose(&nodes, "a", "ap").unwrap().node_id, "c");
        let tie = [node("a", "eu", 10, 5), node("b", "eu", 10, 5)];
        assert_eq!(choose(&tie, "b", "eu").unwrap().node_id, "b");
        assert_eq!(choose(&tie, "z", "eu").unwrap().node_id, "a");
        let busy = [node("a", "eu", 10, 900), node("b", "eu", 10, 5)];
        assert_eq!(choose(&busy, "a", "eu").unwrap().node_id, "b");
        assert!(choose(&[], "a", "eu").is_none());
    }

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("sl");
        assert_eq!(k.room("app", "r.1"), "sl:room:app/r.1");
        assert_eq!(k.parse_room("sl:room:app/r.1"), Some(("app", "r.1")));
        assert_eq!(k.parse_room("other:room:app/r"), None);
        assert_eq!(k.node("n1"), format!("{}n1", k.node_prefix()));
    }
}
