//! The one TOML configuration file shared by every Sluice process (relay, control, sluicectl).
//!
//! Owns: the `Config` schema, its defaults (including the embedded default that runs on
//! loopback without a file and without root), validation with errors that name the key and the
//! file line, the default runtime directory, and the runtime discovery record (`control.json`)
//! that sluicectl reads. Every key is documented in `docs/CONFIG.md`.
//! May not touch: sockets, shared memory, SRTP state. Reading the config is not on any hot path.
//!
//! Errors: syntax and type errors come from the TOML parser with a byte span; semantic errors
//! (bad addresses, zero capacities, conflicting keys) are found after parsing. Both are reported
//! as `origin:line: key: message`, the line found from the span or by locating the key.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Name of the runtime discovery file control writes into the runtime directory.
pub const RUNTIME_FILE: &str = "control.json";
/// Environment variable that overrides the runtime directory (for sluicectl discovery and the
/// embedded default).
pub const RUNTIME_DIR_ENV: &str = "SLUICE_RUNTIME_DIR";
/// Environment variables naming the public listener's certificate chain and key (PEM) when
/// the file has no `[http.tls]`; both or neither (`sluicectl up` sets them for its self-signed
/// certificate).
pub const TLS_CERT_ENV: &str = "SLUICE_TLS_CERT_FILE";
pub const TLS_KEY_ENV: &str = "SLUICE_TLS_KEY_FILE";
/// Shortest admin token accepted (characters).
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax or type error, unknown key, or a value the schema refuses.
    #[error("{origin}:{line}:{column}: {key_part}{message}", key_part = key_prefix(key))]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        /// Dotted key (`relay.bind`) when it could be determined.
        key: Option<String>,
        message: String,
    },
    /// A value that parsed but makes no sense (bad address, zero capacity, conflicting keys).
    #[error("{origin}{line_part}: {key}: {message}", line_part = line_suffix(*line))]
    Invalid {
        origin: String,
        /// 1-based line of the key, `None` when the key is not in the file (a default).
        line: Option<usize>,
        key: String,
        message: String,
    },
    /// A file holding a secret (the admin token, a key) is readable by other users.
    #[error("{path} holds a secret (admin token or key) but is world-readable (mode {mode:04o}); run `chmod o-rwx {path}`", path = path.display())]
    InsecurePermissions { path: PathBuf, mode: u32 },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

impl ConfigError {
    /// The dotted key the error is about, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The 1-based file line the error is about, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Parse { line, .. } => Some(*line),
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }
}

/// A secret string (the admin token). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    /// Overwrite the bytes before the allocation is freed, so the token does not linger in
    /// freed heap memory (best effort: copies made by callers of `expose` are theirs).
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An HTTP listen address: TCP `IP:PORT` or `unix:/absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// Loopback TCP or a unix socket: safe for the admin API.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(a) => a.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(format!(
                    "unix socket path `{}` must be absolute",
                    p.display()
                ));
            }
            return Ok(ListenAddr::Unix(p));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("`{s}` is neither IP:PORT (IPv6 as [addr]:port) nor unix:/absolute/path")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The relay's I/O backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// io_uring when the kernel allows it, else mmsg.
    #[default]
    Auto,
    IoUring,
    Mmsg,
    /// AF_XDP: an XDP program steers the media port to AF_XDP sockets (needs CAP_NET_ADMIN,
    /// CAP_NET_RAW and CAP_BPF, and `bind` set to one interface's IPv4 address).
    Xdp,
}

impl Backend {
    /// The configuration spelling: `auto`, `io_uring`, `mmsg` or `xdp`.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Mmsg => "mmsg",
            Backend::Xdp => "xdp",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is not `auto`, `io_uring`, `mmsg` or `xdp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?} (expected \"auto\", \"io_uring\", \"mmsg\" or \"xdp\")")]
pub struct UnknownBackend(pub String);

/// Parses the configuration spelling (command lines: `sluice-relay --backend`, the bench).
impl std::str::FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Backend, UnknownBackend> {
        [Backend::Auto, Backend::IoUring, Backend::Mmsg, Backend::Xdp]
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Runtime files (control.json, generated admin token, slow-path socket).
    pub runtime_dir: PathBuf,
    pub relay: RelayConfig,
    pub control: ControlConfig,
    pub shm: ShmConfig,
    pub srtp: SrtpConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    /// `[cluster]`: several nodes sharing room placement through Redis; absent: one node.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this node's place in a cluster whose registry and room placement live in Redis
/// (or Valkey). Every node of a cluster must hold the same applications and keys, since any
/// node checks a token before it forwards the request to the room's owner.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS); may carry a password,
    /// so `Debug` never prints it.
    pub redis_url: Secret,
    /// This node's name in the registry: 1..=64 of `A-Z a-z 0-9 - _ .`, unique in the cluster.
    pub node_id: String,
    /// The region this node serves (same character set); placement prefers the receiving
    /// node's region.
    #[serde(default = "default_region")]
    pub region: String,
    /// The URL other nodes forward WHIP/WHEP requests to (`http://IP:PORT` on the cluster's
    /// private network); empty: this node's public URL.
    #[serde(default)]
    pub advertise_url: String,
    /// How often the node refreshes its registry entry and the rooms it owns.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u32,
    /// How long an entry outlives its last refresh; a node silent this long has left.
    #[serde(default = "default_entry_ttl_ms")]
    pub entry_ttl_ms: u32,
    /// Prefix of every key this cluster writes in Redis (several clusters may share one).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A file holding the cluster secret (first line, at least 32 characters, not
    /// world-readable), the same on every node: node-to-node requests that carry keys
    /// (`/cluster/v1/…`) are authenticated with it. Unset: those requests are refused.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How far a node-to-node request's timestamp may be from this node's clock, in
    /// milliseconds; older or newer requests are refused as stale.
    #[serde(default = "default_auth_window_ms")]
    pub auth_window_ms: u32,
    /// Serve WHEP viewers of rooms owned elsewhere from this node's relay over a trunk from
    /// the owner's relay (docs/CLUSTER.md "Cascade"); needs `secret_file`. As an origin,
    /// whether this node grants trunks to other nodes.
    #[serde(default)]
    pub cascade: bool,
    /// As an origin: grant a trunk to an edge in this node's region once the room has at
    /// least this many viewers here (an edge in another region always gets one); 0: always.
    #[serde(default)]
    pub cascade_after_viewers: u32,
    /// As an edge: a trunk on which nothing arrives for this long while the origin reports
    /// sending on it is closed with its rooms' viewers (`trunk_silent`), so that they
    /// reconnect. Milliseconds.
    #[serde(default = "default_trunk_silence_ms")]
    pub trunk_silence_ms: u32,
}

fn default_region() -> String {
    "default".into()
}
fn default_heartbeat_ms() -> u32 {
    1_000
}
fn default_entry_ttl_ms() -> u32 {
    5_000
}
fn default_key_prefix() -> String {
    "sluice".into()
}
fn default_auth_window_ms() -> u32 {
    10_000
}
fn default_trunk_silence_ms() -> u32 {
    10_000
}

/// `[log]`: how both daemons write their logs (to stderr, which systemd gives to journald).
/// The level is `$SLUICE_LOG` (a tracing filter such as `info` or `debug`), default `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

#[cfg(feature = "logging")]
impl LogFormat {
    /// Install the process's logger: stderr, this format, the level `$SLUICE_LOG` names
    /// (default `info`), colour only on a terminal. Both daemons call it once, after reading
    /// their configuration.
    pub fn init(self) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let fmt = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self {
            LogFormat::Json => fmt.json().flatten_event(true).init(),
            LogFormat::Text => fmt
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
        }
    }
}

/// `[relay]`: the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// The one UDP media address every peer sends to.
    pub bind: SocketAddr,
    /// Worker threads; 0 = one per CPU the process may run on.
    pub workers: u32,
    pub backend: Backend,
    /// Datagrams received (and at most sent) per loop turn and worker.
    pub batch: u32,
    /// SO_RCVBUF per worker socket, bytes (the kernel caps it at net.core.rmem_max).
    pub recv_buffer_bytes: u32,
    /// SO_SNDBUF per worker socket, bytes (capped at net.core.wmem_max).
    pub send_buffer_bytes: u32,
    /// A loop turn longer than this is counted (and logged) as a stall.
    pub stall_threshold_ms: u32,
    /// Largest datagram a worker receives (its receive buffers' size), bytes. Larger ones are
    /// dropped and counted (`oversized`).
    pub max_datagram_bytes: u32,
    /// Packets kept per publisher stream for answering NACKs (rounded up to a power of two);
    /// 0 turns the retransmission cache off (NACKs then go to the publisher).
    pub nack_cache_packets: u32,
    /// A cached packet older than this is not resent (it would arrive too late to play).
    pub nack_cache_age_ms: u32,
    /// Publisher streams one worker caches at most (memory bound: each takes
    /// `nack_cache_packets` × 1472 bytes); streams past it are forwarded uncached.
    pub nack_cache_streams: u32,
    /// The same packet is resent to the same subscriber at most once per this interval (one
    /// round trip: a second NACK inside it was sent before the first resend could arrive);
    /// also the interval between NACKs the relay sends a publisher for one missing packet.
    pub nack_rtt_ms: u32,
    /// How many times the relay asks a publisher for a packet missing from its stream.
    pub nack_upstream_retries: u32,
    /// PLIs for one publisher stream are forwarded at most once per this interval; the others
    /// are absorbed (`pli_aggregated`). 0 forwards every PLI.
    pub pli_interval_ms: u32,
    /// `[relay.tcp]`: passive ICE-TCP (RFC 6544, RFC 4571 framing).
    pub tcp: TcpConfig,
}

/// `[relay.tcp]`: the passive ICE-TCP listener of the workers (docs/IO.md "ICE-TCP").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Listen for ICE-TCP and announce `tcptype passive` candidates.
    pub enabled: bool,
    /// TCP port (same IP as `relay.bind`); 0 = the port of `relay.bind`.
    pub port: u16,
    /// Open connections, validated or not (all held by worker 0); more are accepted and
    /// closed at once (counted).
    pub max_connections: u32,
    /// A connection whose first frame is not a STUN binding request, or that sends none within
    /// this time, is closed.
    pub handshake_timeout_ms: u32,
    /// SO_SNDBUF per connection, bytes: what a slow reader may have unread before the relay
    /// drops it.
    pub send_buffer_bytes: u32,
    /// Datagrams for ICE-TCP peers the other workers may have queued for worker 0 (which
    /// holds every connection) at once; more are dropped and counted. Each takes
    /// `relay.max_datagram_bytes` of memory, allocated at start.
    pub forward_queue_frames: u32,
}

impl Default for TcpConfig {
    fn default() -> TcpConfig {
        TcpConfig {
            enabled: false,
            port: 0,
            max_connections: 16_384,
            handshake_timeout_ms: 5_000,
            send_buffer_bytes: 262_144,
            forward_queue_frames: 4096,
        }
    }
}

impl TcpConfig {
    /// The address the TCP listener binds: `bind`'s IP with [`port`](Self::port) (or `bind`'s
    /// port when that is 0).
    pub fn listen_addr(&self, bind: SocketAddr) -> SocketAddr {
        let port = if self.port == 0 {
            bind.port()
        } else {
            self.port
        };
        SocketAddr::new(bind.ip(), port)
    }
}

/// Largest `relay.nack_cache_packets` (about 4 s of 3 Mbit/s video).
pub const MAX_NACK_CACHE_PACKETS: u32 = 4096;

/// Smallest `relay.max_datagram_bytes`: the default, [`crate::wire::MAX_DATAGRAM`].
pub const MIN_MAX_DATAGRAM_BYTES: u32 = crate::wire::MAX_DATAGRAM as u32;
/// Largest `relay.max_datagram_bytes`: a 9216-byte jumbo frame.
pub const MAX_MAX_DATAGRAM_BYTES: u32 = 9216;

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 4443)),
            workers: 0,
            backend: Backend::Auto,
            batch: 64,
            recv_buffer_bytes: 4 << 20,
            send_buffer_bytes: 4 << 20,
            stall_threshold_ms: 100,
            max_datagram_bytes: MIN_MAX_DATAGRAM_BYTES,
            nack_cache_packets: 512,
            nack_cache_age_ms: 2000,
            nack_cache_streams: 256,
            nack_rtt_ms: 100,
            nack_upstream_retries: 3,
            pli_interval_ms: 250,
            tcp: TcpConfig::default(),
        }
    }
}

/// `[control]`: the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Admin REST API; loopback or `unix:/path` only.
    pub admin_listen: ListenAddr,
    /// The admin bearer token, inline (the file must then not be world-readable).
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (first line). Conflicts with `admin_token`.
    pub admin_token_file: Option<PathBuf>,
    /// Public HTTP listener (WHIP/WHEP, health); absent = the admin listener.
    pub public_listen: Option<ListenAddr>,
    /// Addresses announced as ICE candidates; empty = the relay bind address.
    pub public_addresses: Vec<IpAddr>,
    /// Persisted sessions, routes and id counters (0700; holds keys).
    pub state_dir: PathBuf,
    /// Audit log file (rotated into `<name>.<date>[.n]` beside it).
    pub audit_log: PathBuf,
    /// Rotated audit files older than this are deleted.
    pub audit_retention_days: u32,
    /// Rotate the audit log when it grows past this size (it also rotates daily).
    pub audit_max_bytes: u64,
    /// Unix socket where control accepts the relay's slow-path connection.
    pub slow_path: PathBuf,
    /// Slow-path datagrams per second control processes in total (token bucket, 1 s burst).
    pub slow_path_rate: u32,
    /// Slow-path datagrams per second from one source (IPv4 address or IPv6 /64).
    pub slow_path_per_source_rate: u32,
    /// ICE consent timeout (RFC 7675 §5.1): a nominated peer silent this long is expired.
    pub ice_consent_timeout_secs: u32,
    /// File holding the 32-byte master secret that seals developer keys at rest (base64 or
    /// raw, mode 0600). Absent: the systemd credential `sluice-master-key`, else
    /// `<state_dir>/master.key`, generated (0600) on first start.
    pub master_key_file: Option<PathBuf>,
    /// `Access-Control-Allow-Origin` of the WHIP/WHEP endpoints.
    pub cors_allow_origin: String,
    /// An application created, with one generated developer key, when no application exists
    /// (the embedded default sets `demo`).
    pub bootstrap_app: Option<String>,
    /// Concurrent DTLS handshakes, in total.
    pub dtls_max_handshakes: u32,
    /// Concurrent DTLS handshakes from one source IP address.
    pub dtls_max_handshakes_per_ip: u32,
    /// A DTLS handshake must finish this many seconds after it starts.
    pub dtls_handshake_timeout_secs: u32,
    /// A WHIP/WHEP session whose peer ICE has not nominated this many seconds after the
    /// offer is removed with its routes.
    pub signaling_timeout_secs: u32,
    /// Concurrent WebRTC sessions of one token subject in one room (stream tokens: one
    /// source address).
    pub max_sessions_per_subject: u32,
    /// Concurrent WebRTC sessions in one room.
    pub max_sessions_per_room: u32,
    /// SSRCs one media section of a WHIP/WHEP offer may announce (each becomes routes for
    /// every viewer): a stream, its RTX and FEC, simulcast layers.
    pub max_ssrcs_per_media: u32,
    /// SSRCs one offer may announce in all.
    pub max_ssrcs_per_offer: u32,
    /// Serve `POST /demo/token` (loopback clients only) when the demo page is on.
    pub demo_tokens: bool,
    /// Allowed clock difference with the minting back end for signed tokens, seconds.
    pub token_leeway_secs: u64,
    /// Longest lifetime (`exp − min(nbf, iat)`) a signed token may have, seconds.
    pub token_max_lifetime_secs: u64,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            admin_listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin_token: None,
            admin_token_file: None,
            public_listen: None,
            public_addresses: Vec::new(),
            state_dir: PathBuf::new(),
            audit_log: PathBuf::new(),
            audit_retention_days: 180,
            audit_max_bytes: 64 << 20,
            slow_path: PathBuf::new(),
            slow_path_rate: 20_000,
            slow_path_per_source_rate: 200,
            ice_consent_timeout_secs: 30,
            master_key_file: None,
            cors_allow_origin: "*".into(),
            bootstrap_app: None,
            dtls_max_handshakes: 256,
            dtls_max_handshakes_per_ip: 8,
            dtls_handshake_timeout_secs: 15,
            signaling_timeout_secs: 30,
            max_sessions_per_subject: 8,
            max_sessions_per_room: 1000,
            max_ssrcs_per_media: 8,
            max_ssrcs_per_offer: 16,
            demo_tokens: true,
            token_leeway_secs: 30,
            token_max_lifetime_secs: 86_400,
        }
    }
}

/// `[http]`: connection limits and deadlines of control's HTTP listeners (each listener counts
/// on its own); `[http.tls]`: HTTPS on the public one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Open connections on one listener; more are refused at accept.
    pub max_connections: u32,
    /// Open connections on one listener from one source (IPv4 address or IPv6 /64).
    pub max_connections_per_address: u32,
    /// A request head must be complete this long after the connection became ready for it (the
    /// TLS handshake too must finish within it); this is also how long an idle HTTP/1.1
    /// keep-alive connection stays open.
    pub header_timeout_ms: u32,
    /// A request body must be complete this long after its head.
    pub body_timeout_ms: u32,
    /// A connection that receives nothing this long (an HTTP/2 connection left open, a client
    /// that stopped reading its answer) is shut down.
    pub idle_timeout_secs: u32,
    /// HTTPS (HTTP/1.1 and HTTP/2) on `control.public_listen`; absent: plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_connections: 4096,
            max_connections_per_address: 32,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            idle_timeout_secs: 60,
            tls: None,
        }
    }
}

/// `[http.tls]`: the public listener's certificate. Both files are read again when they change
/// (and on SIGHUP) without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1); must not be readable by others.
    pub key_file: PathBuf,
    /// `Strict-Transport-Security: max-age` on HTTPS answers; 0 sends no header.
    #[serde(default = "default_hsts_max_age")]
    pub hsts_max_age_secs: u64,
}

fn default_hsts_max_age() -> u64 {
    31_536_000
}

/// `[shm]`: the shared-memory file control creates and the relay maps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShmConfig {
    pub path: PathBuf,
    /// Session table capacity (used when control creates the file).
    pub sessions: u32,
    /// Route table capacity.
    pub routes: u32,
    /// Counter blocks: the most relay workers that get counters.
    pub worker_slots: u32,
    /// Stream-state slots per worker (persisted SRTP rollover state of the streams a worker
    /// handles, so a restarted relay continues every stream's packet index; docs/SHM.md).
    pub streams_per_worker: u32,
}

impl Default for ShmConfig {
    fn default() -> ShmConfig {
        ShmConfig {
            path: default_shm_path(),
            sessions: 16_384,
            routes: 65_536,
            worker_slots: 64,
            streams_per_worker: crate::shm::DEFAULT_STREAMS_PER_WORKER,
        }
    }
}

/// `[srtp]`: crypto-context tunables (RFC 3711).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrtpConfig {
    /// Replay window in packets (RFC 3711 §3.3.2), 64..=32768, rounded up to a multiple of 64.
    pub replay_window: u32,
    /// Key derivation rate (RFC 3711 §4.3.1): 0 or a power of two up to 2^24.
    pub kdr: u64,
    /// SSRCs tracked per direction of one session.
    pub max_streams: u32,
    /// Packets under a new master key after which the previous key is forgotten.
    pub rotation_grace: u32,
}

impl Default for SrtpConfig {
    fn default() -> SrtpConfig {
        SrtpConfig {
            replay_window: 1024,
            kdr: 0,
            max_streams: 16,
            rotation_grace: 1024,
        }
    }
}

impl SrtpConfig {
    /// The SRTP context options these settings describe.
    pub fn context_options(&self) -> crate::srtp::ContextOptions {
        crate::srtp::ContextOptions {
            replay_window: self.replay_window,
            kdr: self.kdr,
            max_streams: self.max_streams as usize,
            rotation_grace: self.rotation_grace,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            runtime_dir: PathBuf::new(),
            relay: RelayConfig::default(),
            control: ControlConfig::default(),
            shm: ShmConfig::default(),
            srtp: SrtpConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            cluster: None,
        }
    }
}

/// The uid of this process (owner of `/proc/self`), without `unsafe`.
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn uid_tag() -> String {
    current_uid().map_or_else(|| "user".to_string(), |u| u.to_string())
}

/// The default runtime directory: `$XDG_RUNTIME_DIR/sluice` when that variable holds an
/// absolute path, else `/tmp/sluice-<uid>`. Needs no root. (sluicectl first tries
/// `$SLUICE_RUNTIME_DIR`; see [`runtime_dir_candidates`].)
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if Path::new(&x).is_absolute() => PathBuf::from(x).join("sluice"),
        _ => PathBuf::from(format!("/tmp/sluice-{}", uid_tag())),
    }
}

/// The runtime directory of the system instance: what the shipped `sluice.toml` and the
/// systemd units use.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/sluice";

/// Where sluicectl looks for `control.json`: `$SLUICE_RUNTIME_DIR` alone when it is set (it
/// names one instance, as `--runtime-dir` does); else [`default_runtime_dir`] (a per-user
/// instance such as `sluicectl up`), then [`SYSTEM_RUNTIME_DIR`] (the systemd-installed
/// instance).
pub fn runtime_dir_candidates() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut v = vec![default_runtime_dir()];
    let system = PathBuf::from(SYSTEM_RUNTIME_DIR);
    if !v.contains(&system) {
        v.push(system);
    }
    v
}

/// The default shm path: per user, so two users (or `sluicectl up` next to a system install)
/// never collide: `/dev/shm/sluice-<uid>`.
pub fn default_shm_path() -> PathBuf {
    PathBuf::from(format!("/dev/shm/sluice-{}", uid_tag()))
}

/// What control publishes in `<runtime_dir>/control.json` (mode 0600) once it is ready; removed
/// on clean exit. sluicectl reads it to find the admin API and token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Base URL of the admin API, e.g. `http://127.0.0.1:8080` or `unix:/run/sluice/admin.sock`.
    pub admin_url: String,
    pub admin_token: String,
    /// The relay's UDP media address, `IP:PORT`.
    pub media_addr: String,
    /// Base of `/whip`, `/whep`, `/demo`.
    pub public_url: String,
    pub metrics_url: String,
    /// Control's pid.
    pub pid: u32,
    pub shm_path: String,
}

impl RuntimeInfo {
    /// `<dir>/control.json`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(RUNTIME_FILE)
    }

    /// The first `control.json` that exists in [`runtime_dir_candidates`] order. Callers
    /// parse it with `serde_json::from_str::<RuntimeInfo>`.
    pub fn find_file() -> Option<PathBuf> {
        runtime_dir_candidates()
            .into_iter()
            .map(|d| RuntimeInfo::path_in(&d))
            .find(|p| p.is_file())
    }
}

impl Config {
    /// The configuration used when no file is given: everything on loopback, runtime and state
    /// under the per-user runtime directory (`$SLUICE_RUNTIME_DIR`, else
    /// [`default_runtime_dir`]), shm at [`default_shm_path`], no admin token (control
    /// generates one at start and publishes it in the runtime directory).
    pub fn embedded_default() -> Config {
        let mut c = Config::default();
        c.control.bootstrap_app = Some("demo".into());
        c.resolve_paths();
        c
    }

    /// Read and validate a file. Refuses a world-readable file that holds `admin_token`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        let cfg = Config::from_toml_str(&text, &path.display().to_string())?;
        if cfg.control.admin_token.is_some() {
            check_not_world_readable(path)?;
        }
        Ok(cfg)
    }

    /// Parse and validate TOML text; `origin` names it in errors (a path, or `<embedded>`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column, key) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (l, c, key_at_line(text, l))
                }
                None => (1, 1, None),
            };
            ConfigError::Parse {
                origin: origin.to_string(),
                line,
                column,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        cfg.resolve_paths();
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_string(),
                line: locate_key(text, &key),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Fill path keys left empty with their defaults under `runtime_dir`.
    fn resolve_paths(&mut self) {
        if self.runtime_dir.as_os_str().is_empty() {
            self.runtime_dir = std::env::var_os(RUNTIME_DIR_ENV)
                .filter(|d| !d.is_empty())
                .map_or_else(default_runtime_dir, PathBuf::from);
        }
        let rd = self.runtime_dir.clone();
        let fill = |p: &mut PathBuf, rel: &str| {
            if p.as_os_str().is_empty() {
                *p = rd.join(rel);
            }
        };
        fill(&mut self.control.state_dir, "state");
        fill(&mut self.control.audit_log, "audit/audit.log");
        fill(&mut self.control.slow_path, "slow-path.sock");
        if self.http.tls.is_none() {
            let var = |n| {
                std::env::var_os(n)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            };
            if let (Some(cert_file), Some(key_file)) = (var(TLS_CERT_ENV), var(TLS_KEY_ENV)) {
                self.http.tls = Some(TlsConfig {
                    cert_file,
                    key_file,
                    hsts_max_age_secs: default_hsts_max_age(),
                });
            }
        }
    }

    /// Semantic checks. Returns the dotted key and what is wrong with it.
    pub fn validate(&self) -> Check {
        abs("runtime_dir", &self.runtime_dir)?;
        validate_relay(&self.relay)?;
        validate_control(&self.control)?;
        validate_http(&self.http, &self.control)?;
        validate_shm(&self.shm)?;
        if self.relay.workers > self.shm.worker_slots {
            return bad(
                "relay.workers",
                format!(
                    "{} is more than shm.worker_slots ({})",
                    self.relay.workers, self.shm.worker_slots
                ),
            );
        }
        validate_srtp(&self.srtp)?;
        self.cluster.as_ref().map_or(Ok(()), validate_cluster)
    }

    /// The admin token from `admin_token` or `admin_token_file` (first line, trimmed); `None`
    /// when neither is set (control then generates one). The token file must not be
    /// world-readable.
    pub fn admin_token(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(t) = &self.control.admin_token {
            return Ok(Some(t.clone()));
        }
        let Some(p) = &self.control.admin_token_file else {
            return Ok(None);
        };
        check_not_world_readable(p)?;
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        let tok = text.lines().next().unwrap_or("").trim().to_string();
        check_token_text(&tok).map_err(|message| ConfigError::Invalid {
            origin: p.display().to_string(),
            line: Some(1),
            key: "control.admin_token_file".into(),
            message,
        })?;
        Ok(Some(Secret(tok)))
    }

    /// The cluster secret from `cluster.secret_file` (first line, trimmed, at least 32
    /// characters, not world-readable); `None` without a cluster or a secret file.
    pub fn cluster_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let Some(p) = self.cluster.as_ref().and_then(|c| c.secret_file.as_ref()) else {
            return Ok(None);
        };
        check_not_world_readable(p)?;
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        let secret = text.lines().next().unwrap_or("").trim().to_string();
        if secret.len() < 32 {
            return Err(ConfigError::Invalid {
                origin: p.display().to_string(),
                line: Some(1),
                key: "cluster.secret_file".into(),
                message: format!(
                    "the secret has {} characters; at least 32 are required",
                    secret.len()
                ),
            });
        }
        Ok(Some(Secret(secret)))
    }
}

impl Config {
    /// What a start checks beyond the file itself, so that `--check-config` and a real start
    /// agree: the admin token (a configured `admin_token_file` must exist, not be
    /// world-readable and hold a long enough token). Returns warnings for a configuration that
    /// starts but is likely wrong: a relay bound to an unspecified address with no
    /// `control.public_addresses`, whose WebRTC candidates only this host can reach.
    pub fn check_for_start(&self) -> Result<Vec<String>, ConfigError> {
        self.admin_token()?;
        self.cluster_secret()?;
        if let Some(t) = &self.http.tls {
            std::fs::metadata(&t.cert_file).map_err(|source| ConfigError::Io {
                path: t.cert_file.clone(),
                source,
            })?;
            check_not_world_readable(&t.key_file)?;
        }
        let mut warnings = Vec::new();
        let bind = self.relay.bind;
        if self.control.public_addresses.is_empty() && bind.ip().is_unspecified() {
            let loopback = if bind.is_ipv4() { "127.0.0.1" } else { "::1" };
            warnings.push(format!(
                "relay.bind is {bind} and control.public_addresses is empty: WebRTC peers are \
                 offered {loopback} as the relay's address, which only this host can reach; set \
                 control.public_addresses to the addresses browsers dial"
            ));
        }
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| c.advertise_url.is_empty())
        {
            let public = self
                .control
                .public_listen
                .as_ref()
                .unwrap_or(&self.control.admin_listen);
            let reachable = matches!(public, ListenAddr::Tcp(a) if !a.ip().is_loopback());
            if !reachable {
                warnings.push(format!(
                    "cluster.advertise_url is empty and the public listener is {public}: other \
                     nodes forward WHIP/WHEP for this node's rooms there, which only this host \
                     can reach; set cluster.advertise_url (or a public_listen off loopback)"
                ));
            }
        }
        Ok(warnings)
    }
}

/// A semantic check's outcome: the dotted key and what is wrong with it.
type Check = Result<(), (String, String)>;

fn bad(key: &str, message: impl Into<String>) -> Check {
    Err((key.to_string(), message.into()))
}

fn abs(key: &str, p: &Path) -> Check {
    if p.is_absolute() {
        Ok(())
    } else {
        bad(key, format!("path `{}` must be absolute", p.display()))
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, v: T, lo: T, hi: T) -> Check {
    if v < lo || v > hi {
        bad(key, format!("{v} is out of range {lo}..={hi}"))
    } else {
        Ok(())
    }
}

fn at_least<T: PartialOrd + std::fmt::Display>(key: &str, v: T, lo: T) -> Check {
    if v < lo {
        bad(key, format!("{v} is below {lo}"))
    } else {
        Ok(())
    }
}

fn validate_relay(r: &RelayConfig) -> Check {
    if r.bind.ip().is_multicast() {
        return bad(
            "relay.bind",
            format!("{} is a multicast address", r.bind.ip()),
        );
    }
    if r.workers > 1024 {
        return bad("relay.workers", format!("{} is more than 1024", r.workers));
    }
    if r.tcp.enabled && r.backend == Backend::Xdp {
        return bad(
            "relay.tcp.enabled",
            "ICE-TCP runs on the io_uring and mmsg backends, not on relay.backend = \"xdp\"",
        );
    }
    if r.backend == Backend::Xdp {
        // The XDP program is attached to the interface that holds the bind address.
        let ip = r.bind.ip();
        if !ip.is_ipv4() || ip.is_unspecified() || ip.is_loopback() {
            return bad(
                "relay.bind",
                format!(
                    "backend \"xdp\" needs the IPv4 address of one network interface \
                     (the XDP program is attached there), not {ip}"
                ),
            );
        }
    }
    in_range("relay.batch", r.batch, 1, 1024)?;
    at_least("relay.recv_buffer_bytes", r.recv_buffer_bytes, 65_536)?;
    at_least("relay.send_buffer_bytes", r.send_buffer_bytes, 65_536)?;
    if r.stall_threshold_ms == 0 {
        return bad("relay.stall_threshold_ms", "must be at least 1");
    }
    in_range(
        "relay.max_datagram_bytes",
        r.max_datagram_bytes,
        MIN_MAX_DATAGRAM_BYTES,
        MAX_MAX_DATAGRAM_BYTES,
    )?;
    if r.nack_cache_packets != 0 {
        in_range(
            "relay.nack_cache_packets",
            r.nack_cache_packets,
            16,
            MAX_NACK_CACHE_PACKETS,
        )?;
    }
    in_range("relay.nack_cache_age_ms", r.nack_cache_age_ms, 10, 10_000)?;
    in_range("relay.nack_cache_streams", r.nack_cache_streams, 1, 65_536)?;
    in_range("relay.nack_rtt_ms", r.nack_rtt_ms, 1, 5_000)?;
    in_range(
        "relay.nack_upstream_retries",
        r.nack_upstream_retries,
        0,
        16,
    )?;
    in_range("relay.pli_interval_ms", r.pli_interval_ms, 0, 10_000)?;
    validate_tcp(&r.tcp)
}

fn validate_tcp(t: &TcpConfig) -> Check {
    in_range("relay.tcp.max_connections", t.max_connections, 1, 1_000_000)?;
    in_range(
        "relay.tcp.handshake_timeout_ms",
        t.handshake_timeout_ms,
        100,
        60_000,
    )?;
    in_range(
        "relay.tcp.send_buffer_bytes",
        t.send_buffer_bytes,
        16_384,
        16 << 20,
    )?;
    in_range(
        "relay.tcp.forward_queue_frames",
        t.forward_queue_frames,
        16,
        65_536,
    )
}

fn validate_control(c: &ControlConfig) -> Check {
    validate_admin(c)?;
    if c.cors_allow_origin.is_empty() || c.cors_allow_origin.chars().any(|ch| ch.is_control()) {
        return bad(
            "control.cors_allow_origin",
            "must be `*` or an origin such as `https://example.com`",
        );
    }
    if let Some(a) = &c.bootstrap_app {
        let ok = !a.is_empty()
            && a.len() <= 64
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return bad(
                "control.bootstrap_app",
                format!("`{a}`: 1..=64 of A-Z a-z 0-9 - _ ."),
            );
        }
    }
    validate_webrtc_limits(c)?;
    for a in &c.public_addresses {
        if a.is_unspecified() || a.is_multicast() {
            return bad(
                "control.public_addresses",
                format!("{a} cannot be announced as a candidate"),
            );
        }
    }
    abs("control.state_dir", &c.state_dir)?;
    abs("control.audit_log", &c.audit_log)?;
    abs("control.slow_path", &c.slow_path)?;
    if c.audit_log.file_name().is_none() {
        return bad("control.audit_log", "must name a file");
    }
    if c.audit_retention_days == 0 {
        return bad("control.audit_retention_days", "must be at least 1");
    }
    in_range("control.slow_path_rate", c.slow_path_rate, 1, 1_000_000)?;
    in_range(
        "control.slow_path_per_source_rate",
        c.slow_path_per_source_rate,
        1,
        1_000_000,
    )?;
    in_range(
        "control.ice_consent_timeout_secs",
        c.ice_consent_timeout_secs,
        10,
        3600,
    )?;
    at_least("control.audit_max_bytes", c.audit_max_bytes, 4096)
}

/// `[http]` and `[http.tls]`.
fn validate_http(h: &HttpConfig, c: &ControlConfig) -> Check {
    in_range("http.max_connections", h.max_connections, 1, 1_000_000)?;
    in_range(
        "http.max_connections_per_address",
        h.max_connections_per_address,
        1,
        h.max_connections,
    )?;
    in_range("http.header_timeout_ms", h.header_timeout_ms, 100, 60_000)?;
    in_range("http.body_timeout_ms", h.body_timeout_ms, 100, 300_000)?;
    in_range("http.idle_timeout_secs", h.idle_timeout_secs, 1, 3600)?;
    let Some(t) = &h.tls else { return Ok(()) };
    match &c.public_listen {
        Some(ListenAddr::Tcp(_)) if c.public_listen.as_ref() != Some(&c.admin_listen) => {}
        _ => {
            return bad(
                "http.tls",
                "HTTPS is served on control.public_listen: set it to a TCP address other than \
                 control.admin_listen",
            )
        }
    }
    abs("http.tls.cert_file", &t.cert_file)?;
    abs("http.tls.key_file", &t.key_file)?;
    in_range(
        "http.tls.hsts_max_age_secs",
        t.hsts_max_age_secs,
        0,
        63_072_000,
    )
}

/// `[cluster]`.
fn validate_cluster(c: &ClusterConfig) -> Check {
    let url = c.redis_url.expose();
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(
            "cluster.redis_url",
            "expected redis://HOST[:PORT] or rediss://HOST[:PORT]",
        );
    };
    if scheme != "redis" && scheme != "rediss" {
        return bad(
            "cluster.redis_url",
            format!("scheme `{scheme}` is not redis or rediss"),
        );
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.split(['/', ':']).next().is_none_or(str::is_empty) {
        return bad("cluster.redis_url", "the URL names no host");
    }
    let name = |key: &str, v: &str| {
        if !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Ok(())
        } else {
            bad(key, format!("`{v}` is not 1..=64 of A-Z a-z 0-9 - _ ."))
        }
    };
    name("cluster.node_id", &c.node_id)?;
    name("cluster.region", &c.region)?;
    name("cluster.key_prefix", &c.key_prefix)?;
    if !c.advertise_url.is_empty() {
        let ok = c
            .advertise_url
            .strip_prefix("http://")
            .is_some_and(|h| !h.is_empty() && !h.contains('/') && !h.contains('@'));
        if !ok {
            return bad(
                "cluster.advertise_url",
                "expected http://HOST:PORT (no path, no credentials)",
            );
        }
    }
    in_range("cluster.heartbeat_ms", c.heartbeat_ms, 100, 60_000)?;
    in_range("cluster.auth_window_ms", c.auth_window_ms, 1_000, 120_000)?;
    in_range(
        "cluster.trunk_silence_ms",
        c.trunk_silence_ms,
        1_000,
        600_000,
    )?;
    if let Some(p) = &c.secret_file {
        if !p.is_absolute() {
            return bad("cluster.secret_file", "expected an absolute path");
        }
    }
    if c.cascade && c.secret_file.is_none() {
        return bad(
            "cluster.cascade",
            "cascading needs cluster.secret_file (trunk keys travel only between authenticated nodes)",
        );
    }
    in_range(
        "cluster.entry_ttl_ms",
        c.entry_ttl_ms,
        c.heartbeat_ms.saturating_mul(2),
        600_000,
    )
}

/// The admin listener, token and the secret files' paths.
fn validate_admin(c: &ControlConfig) -> Check {
    if !c.admin_listen.is_local() {
        return bad(
            "control.admin_listen",
            format!("{} is not loopback: the admin API listens only on loopback or a unix socket (put a TLS proxy in front for remote access)", c.admin_listen),
        );
    }
    if let ListenAddr::Tcp(a) = &c.admin_listen {
        if a.ip().is_unspecified() {
            return bad("control.admin_listen", "unspecified address");
        }
    }
    if c.admin_token.is_some() && c.admin_token_file.is_some() {
        return bad(
            "control.admin_token_file",
            "set either admin_token or admin_token_file, not both",
        );
    }
    if let Some(t) = &c.admin_token {
        check_token_text(t.expose()).or_else(|m| bad("control.admin_token", m))?;
    }
    if let Some(p) = &c.master_key_file {
        abs("control.master_key_file", p)?;
    }
    if let Some(p) = &c.admin_token_file {
        abs("control.admin_token_file", p)?;
    }
    Ok(())
}

/// DTLS handshakes, signaling, join caps and token checks.
fn validate_webrtc_limits(c: &ControlConfig) -> Check {
    in_range(
        "control.dtls_max_handshakes",
        c.dtls_max_handshakes,
        1,
        100_000,
    )?;
    if c.dtls_max_handshakes_per_ip == 0 || c.dtls_max_handshakes_per_ip > c.dtls_max_handshakes {
        return bad(
            "control.dtls_max_handshakes_per_ip",
            format!(
                "{} is out of range 1..=dtls_max_handshakes",
                c.dtls_max_handshakes_per_ip
            ),
        );
    }
    in_range(
        "control.dtls_handshake_timeout_secs",
        c.dtls_handshake_timeout_secs,
        1,
        120,
    )?;
    in_range(
        "control.signaling_timeout_secs",
        c.signaling_timeout_secs,
        5,
        600,
    )?;
    in_range(
        "control.max_sessions_per_room",
        c.max_sessions_per_room,
        1,
        100_000,
    )?;
    if c.max_sessions_per_subject == 0 || c.max_sessions_per_subject > c.max_sessions_per_room {
        return bad(
            "control.max_sessions_per_subject",
            format!(
                "{} is out of range 1..=max_sessions_per_room",
                c.max_sessions_per_subject
            ),
        );
    }
    in_range("control.max_ssrcs_per_media", c.max_ssrcs_per_media, 1, 64)?;
    in_range(
        "control.max_ssrcs_per_offer",
        c.max_ssrcs_per_offer,
        c.max_ssrcs_per_media,
        256,
    )?;
    in_range("control.token_leeway_secs", c.token_leeway_secs, 0, 600)?;
    in_range(
        "control.token_max_lifetime_secs",
        c.token_max_lifetime_secs,
        60,
        2_592_000,
    )
}

fn validate_shm(s: &ShmConfig) -> Check {
    abs("shm.path", &s.path)?;
    // Upper bounds mirror the shm layer's limits (crate::shm refuses larger files).
    in_range("shm.sessions", s.sessions, 1, 1 << 22)?;
    in_range("shm.routes", s.routes, 1, 1 << 24)?;
    in_range("shm.worker_slots", s.worker_slots, 1, 1024)?;
    in_range(
        "shm.streams_per_worker",
        s.streams_per_worker,
        1,
        crate::shm::MAX_STREAMS_PER_WORKER,
    )
}

fn validate_srtp(t: &SrtpConfig) -> Check {
    in_range("srtp.replay_window", t.replay_window, 64, 32_768)?;
    // RFC 3711 §4.3.1: the key derivation rate is 0 or a power of two from 1 to 2^24.
    if t.kdr != 0 && (!t.kdr.is_power_of_two() || t.kdr > 1 << 24) {
        return bad(
            "srtp.kdr",
            format!(
                "{} is not 0 or a power of two up to 2^24 (RFC 3711 §4.3.1)",
                t.kdr
            ),
        );
    }
    in_range("srtp.max_streams", t.max_streams, 1, 1024)
}

fn check_token_text(t: &str) -> Result<(), String> {
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!("token is shorter than {MIN_TOKEN_LEN} characters"));
    }
    if !t.chars().all(|c| c.is_ascii_graphic()) {
        return Err("token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// Least privilege (docs/SECURITY.md): refuse a file that holds a secret (admin token, master
/// key, developer keys) when other users may read it, with an error naming the path and the
/// `chmod` that fixes it. Every loader of a secret-bearing file calls this before reading it.
pub fn check_secret_file(path: &Path) -> Result<(), ConfigError> {
    check_not_world_readable(path)
}

fn check_not_world_readable(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(ConfigError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

/// The table a `[header]` line opens, if the line is one.
fn header_of(line: &str) -> Option<String> {
    let t = line.trim();
    let inner = t.strip_prefix('[')?;
    let end = inner.find(']')?;
    Some(inner[..end].trim_matches(['[', ' ']).trim().to_string())
}

/// The key a `key = value` line sets, unquoted.
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let eq = t.find('=')?;
    Some(t[..eq].trim().trim_matches(['"', '\'']).to_string())
}

/// The dotted key set (or table opened) on 1-based `line`, from a plain line scan.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        if let Some(h) = header_of(l) {
            if i + 1 == line {
                return Some(h);
            }
            table = h;
            continue;
        }
        if i + 1 == line {
            let k = key_of(l)?;
            return Some(if table.is_empty() {
                k
            } else {
                format!("{table}.{k}")
            });
        }
    }
    None
}

/// The 1-based line that sets the dotted `key`, if the file sets it on a line of its own.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        if let Some(h) = header_of(l) {
            table = h;
            continue;
        }
        if let Some(k) = key_of(l) {
            let full = if table.is_empty() {
                k
            } else {
                format!("{table}.{k}")
            };
            if full == key {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    #[test]
    fn nack_keys_defaults_and_ranges() {
        let r = parse("").unwrap().relay;
        assert_eq!((r.nack_cache_packets, r.nack_cache_age_ms), (512, 2000));
        assert_eq!((r.nack_rtt_ms, r.nack_upstream_retries), (100, 3));
        assert!(
            parse("[relay]\nnack_cache_packets = 0\n").is_ok(),
            "0 = off"
        );
        assert!(parse("[relay]\nnack_cache_packets = 8\n").is_err());
        assert!(parse("[relay]\nnack_cache_packets = 8192\n").is_err());
        assert!(parse("[relay]\nnack_rtt_ms = 0\n").is_err());
        assert!(parse("[relay]\nnack_cache_streams = 0\n").is_err());
    }

    #[test]
    fn tcp_keys_defaults_and_ranges() {
        let c = parse("").unwrap();
        assert!(!c.relay.tcp.enabled);
        assert_eq!(
            c.relay.tcp.listen_addr(c.relay.bind),
            c.relay.bind,
            "port 0 = the UDP port"
        );
        let c = parse("[relay]\nbind = \"[::]:4443\"\n[relay.tcp]\nenabled = true\nport = 443\n")
            .unwrap();
        assert_eq!(
            c.relay.tcp.listen_addr(c.relay.bind),
            "[::]:443".parse::<SocketAddr>().unwrap()
        );
        assert!(parse("[relay.tcp]\nmax_connections = 0\n").is_err());
        assert!(parse("[relay.tcp]\nhandshake_timeout_ms = 10\n").is_err());
        assert!(parse("[relay.tcp]\nsend_buffer_bytes = 1024\n").is_err());
        assert_eq!(c.relay.tcp.forward_queue_frames, 4096);
        assert!(parse("[relay.tcp]\nforward_queue_frames = 1\n").is_err());
        assert!(parse("[relay.tcp]\nforward_queue_frames = 100000\n").is_err());
        let e = parse("[relay]\nbackend = \"xdp\"\n[relay.tcp]\nenabled = true\n").unwrap_err();
        assert_eq!(e.key(), Some("relay.tcp.enabled"), "{e}");
        assert!(parse("[relay]\nworkers = 4\n[relay.tcp]\nenabled = true\n").is_ok());
        assert!(parse("[relay.tcp]\nbogus = 1\n").is_err());
    }

    #[test]
    fn max_datagram_bytes_range() {
        assert_eq!(parse("").unwrap().relay.max_datagram_bytes, 2048);
        let c = parse("[relay]\nmax_datagram_bytes = 9216\n").unwrap();
        assert_eq!(c.relay.max_datagram_bytes, 9216);
        for bad in [0, 2047, 9217, 65_536] {
            let e = parse(&format!("[relay]\nmax_datagram_bytes = {bad}\n")).unwrap_err();
            assert_eq!(
                (e.key(), e.line()),
                (Some("relay.max_datagram_bytes"), Some(2)),
                "{e}"
            );
            assert!(e.to_string().contains("2048..=9216"), "{e}");
        }
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Auto, Backend::IoUring, Backend::Mmsg, Backend::Xdp] {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            assert_eq!(b.to_string(), b.name());
            // The command-line spelling is the configuration file's spelling.
            let c = parse(&format!(
                "[relay]\nbackend = \"{b}\"\nbind = \"192.0.2.1:4443\"\n"
            ))
            .unwrap();
            assert_eq!(c.relay.backend, b);
        }
        // xdp attaches to the interface holding the bind address: a wildcard or loopback
        // address names none.
        for bind in ["0.0.0.0:4443", "127.0.0.1:4443", "[2001:db8::1]:4443"] {
            let e = parse(&format!("[relay]\nbackend = \"xdp\"\nbind = \"{bind}\"\n")).unwrap_err();
            assert_eq!(e.key(), Some("relay.bind"), "{e}");
            assert!(e.to_string().contains("xdp"), "{e}");
        }
        let e = "uring".parse::<Backend>().unwrap_err();
        assert_eq!(e, UnknownBackend("uring".into()));
        assert!(e.to_string().contains("\"io_uring\""), "{e}");
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        c.validate().unwrap();
        assert!(c.control.admin_listen.is_local());
        assert!(c.control.state_dir.starts_with(&c.runtime_dir));
        assert!(c.shm.path.to_string_lossy().contains("sluice-"));
        assert_eq!(c.relay.bind, "127.0.0.1:4443".parse().unwrap());
        assert_eq!(c.control.audit_retention_days, 180);
        assert_eq!(c.shm.sessions, 16_384);
        assert_eq!(c.shm.routes, 65_536);
        assert_eq!(c.srtp.replay_window, 1024);
        assert_eq!(c.control.bootstrap_app.as_deref(), Some("demo"));
        // An empty file is the embedded default, except that only the embedded default
        // bootstraps the `demo` application (a deployment names its own, if any).
        let mut from_file = parse("").unwrap();
        assert_eq!(from_file.control.bootstrap_app, None);
        from_file.control.bootstrap_app = Some("demo".into());
        assert_eq!(from_file, c);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("[relay]\nbind = \"127.0.0.1:5000\"\nbogus = 3\n").unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert_eq!(e.key(), Some("relay.bogus"), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("test.toml:3"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");

        let e = parse("runtime_dir = \"/tmp/x\"\n\n[nonsense]\na = 1\n").unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.to_string().contains("nonsense"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = parse("[relay]\nbackend = \"fast\"\n").unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("relay.backend"), Some(2)), "{e}");
        assert!(e.to_string().contains("fast"), "{e}");

        let e = parse("[relay]\nworkers = 2\nbind = \"localhost\"\n").unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("relay.bind"), Some(3)), "{e}");

        let e = parse("[relay]\nbatch = -1\n").unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("relay.batch"), Some(2)), "{e}");

        let e = parse("[shm]\nroutes = 10\nsessions = 0\n").unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("shm.sessions"), Some(3)), "{e}");
        assert!(e.to_string().contains("test.toml:3: shm.sessions"), "{e}");

        let e = parse("[control]\nadmin_listen = \"0.0.0.0:8080\"\n").unwrap_err();
        assert_eq!(e.key(), Some("control.admin_listen"), "{e}");
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = parse("[control]\nadmin_listen = \"192.0.2.1:8080\"\n").unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");
        let e = parse("[control]\nadmin_listen = \"unix:rel/path\"\n").unwrap_err();
        assert_eq!(e.key(), Some("control.admin_listen"), "{e}");

        let e = parse("[srtp]\nkdr = 3\n").unwrap_err();
        assert_eq!(e.key(), Some("srtp.kdr"), "{e}");
        let e = parse("[srtp]\nreplay_window = 16\n").unwrap_err();
        assert_eq!(e.key(), Some("srtp.replay_window"), "{e}");
        let e = parse("[control]\nadmin_token = \"short\"\n").unwrap_err();
        assert_eq!(e.key(), Some("control.admin_token"), "{e}");
        assert!(
            !e.to_string().contains("short\""),
            "token text must not be echoed: {e}"
        );
        let e = parse("[control]\nstate_dir = \"relative\"\n").unwrap_err();
        assert_eq!(e.key(), Some("control.state_dir"), "{e}");
        let e = parse("[relay]\nworkers = 100\n").unwrap_err();
        assert_eq!(e.key(), Some("relay.workers"), "{e}");
        let e = parse("[relay]\nbind = \"224.0.0.1:4443\"\n").unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("relay.bind"), Some(2)), "{e}");
        let e = parse("[shm]\nworker_slots = 2\n[relay]\nworkers = 4\n").unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("relay.workers"), Some(4)), "{e}");
    }

    #[test]
    fn http_limits_and_tls_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.http, HttpConfig::default());
        let e =
            parse("[http]\nmax_connections = 10\nmax_connections_per_address = 11\n").unwrap_err();
        assert_eq!(e.key(), Some("http.max_connections_per_address"), "{e}");
        let e = parse("[http]\nheader_timeout_ms = 10\n").unwrap_err();
        assert_eq!(e.key(), Some("http.header_timeout_ms"), "{e}");
        let tls = "[http.tls]\ncert_file = \"/etc/sluice/cert.pem\"\nkey_file = \"/etc/sluice/key.pem\"\n";
        // HTTPS needs a public listener of its own.
        let e = parse(tls).unwrap_err();
        assert_eq!(e.key(), Some("http.tls"), "{e}");
        let with_public = format!("[control]\npublic_listen = \"0.0.0.0:8443\"\n{tls}");
        let c = parse(&with_public).unwrap();
        let t = c.http.tls.expect("tls");
        assert_eq!(t.hsts_max_age_secs, 31_536_000);
        assert_eq!(t.key_file, PathBuf::from("/etc/sluice/key.pem"));
        let e = parse(
            "[control]\npublic_listen = \"0.0.0.0:8443\"\n[http.tls]\ncert_file = \"rel.pem\"\nkey_file = \"/k.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("http.tls.cert_file"), "{e}");
        let e = parse(
            "[control]\npublic_listen = \"0.0.0.0:8443\"\n[http.tls]\ncert_file = \"/c.pem\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
    }

    #[test]
    fn unix_and_ipv6_listen() {
        let c = parse("[control]\nadmin_listen = \"unix:/run/sluice/admin.sock\"\npublic_listen = \"[::]:443\"\n").unwrap();
        assert_eq!(
            c.control.admin_listen,
            ListenAddr::Unix("/run/sluice/admin.sock".into())
        );
        assert_eq!(c.control.public_listen.unwrap().to_string(), "[::]:443");
        let c = parse("[relay]\nbind = \"[::1]:4443\"\n").unwrap();
        assert!(c.relay.bind.is_ipv6());
    }

    fn write_temp(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn world_readable_secrets_refused() {
        let text = "[control]\nadmin_token = \"0123456789abcdef0123\"\n";
        let p = write_temp("secret-open.toml", text, 0o644);
        let e = Config::load(&p).unwrap_err();
        assert!(
            matches!(e, ConfigError::InsecurePermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("world-readable"), "{e}");
        let p = write_temp("secret-closed.toml", text, 0o640);
        let c = Config::load(&p).unwrap();
        assert_eq!(
            c.admin_token().unwrap().unwrap().expose(),
            "0123456789abcdef0123"
        );
        // Without a secret a world-readable file is fine.
        let p = write_temp("nosecret.toml", "[relay]\nworkers = 2\n", 0o644);
        Config::load(&p).unwrap();
        // A world-readable token file is refused when the token is read.
        let tf = write_temp("token", "0123456789abcdef0123\n", 0o644);
        let p = write_temp(
            "tokfile.toml",
            &format!("[control]\nadmin_token_file = \"{}\"\n", tf.display()),
            0o644,
        );
        let c = Config::load(&p).unwrap();
        assert!(matches!(
            c.admin_token(),
            Err(ConfigError::InsecurePermissions { .. })
        ));
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            c.admin_token().unwrap().unwrap().expose(),
            "0123456789abcdef0123"
        );
        // The shared check for any other secret file (master key and the like).
        let kf = write_temp("master.key", "c2VjcmV0\n", 0o604);
        let e = check_secret_file(&kf).unwrap_err();
        assert!(e.to_string().contains("chmod o-rwx"), "{e}");
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_secret_file(&kf).unwrap();
        // Debug never shows the token.
        let c = parse(text).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn cluster_section() {
        let base = "[cluster]\nnode_id = \"a\"\n";
        let c = Config::from_toml_str(
            &format!("{base}redis_url = \"rediss://:pw0123@redis.example:6380/2\"\n"),
            "t",
        )
        .unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.region, "default");
        assert_eq!((cl.heartbeat_ms, cl.entry_ttl_ms), (1_000, 5_000));
        assert!(!format!("{c:?}").contains("pw0123"));
        assert!(Config::from_toml_str("", "t").unwrap().cluster.is_none());
        // A node other nodes cannot reach (loopback, no advertise_url) starts with a warning.
        let w = c.check_for_start().unwrap();
        assert!(
            w.iter().any(|w| w.contains("cluster.advertise_url")),
            "{w:?}"
        );
        for (extra, key) in [
            ("redis_url = \"http://h\"", "cluster.redis_url"),
            ("redis_url = \"redis://\"", "cluster.redis_url"),
            ("redis_url = \"redis://:pw@\"", "cluster.redis_url"),
            (
                "redis_url = \"redis://h\"\nregion = \"eu west\"",
                "cluster.region",
            ),
            (
                "redis_url = \"redis://h\"\nadvertise_url = \"https://h:1\"",
                "cluster.advertise_url",
            ),
            (
                "redis_url = \"redis://h\"\nentry_ttl_ms = 1500",
                "cluster.entry_ttl_ms",
            ),
            (
                "redis_url = \"redis://h\"\ncascade = true",
                "cluster.cascade",
            ),
            (
                "redis_url = \"redis://h\"\nsecret_file = \"rel/secret\"",
                "cluster.secret_file",
            ),
            (
                "redis_url = \"redis://h\"\nauth_window_ms = 100",
                "cluster.auth_window_ms",
            ),
        ] {
            let e = Config::from_toml_str(&format!("{base}{extra}\n"), "t").unwrap_err();
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
        let e = Config::from_toml_str(
            "[cluster]\nredis_url = \"redis://h\"\nnode_id = \"\"\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster.node_id"), "{e}");
    }

    #[test]
    fn cluster_secret_file() {
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("secret");
        let cfg = |p: &Path| {
            Config::from_toml_str(
                &format!(
                    "[cluster]\nredis_url = \"redis://h\"\nnode_id = \"a\"\nsecret_file = \"{}\"\ncascade = true\n",
                    p.display()
                ),
                "t",
            )
            .unwrap()
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&p, "short\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = cfg(&p).cluster_secret().unwrap_err();
        assert!(e.to_string().contains("cluster.secret_file"), "{e}");
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = cfg(&p);
        assert!(c.cluster.as_ref().unwrap().cascade);
        let s = c.cluster_secret().unwrap().unwrap();
        assert_eq!(s.expose(), "0123456789abcdef0123456789abcdef");
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(cfg(&p).cluster_secret().is_err(), "world-readable");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../systemd/sluice.toml");
        let c = Config::from_toml_str(text, "systemd/sluice.toml").unwrap();
        assert_eq!(c.shm.path, PathBuf::from("/dev/shm/sluice"));
        assert_eq!(c.runtime_dir, PathBuf::from("/run/sluice"));
        assert_eq!(c.control.state_dir, PathBuf::from("/var/lib/sluice"));
        assert!(c.control.admin_token_file.is_some());
    }

    #[test]
    fn every_documented_key_is_in_the_docs() {
        let docs = include_str!("../../docs/CONFIG.md");
        for key in [
            "runtime_dir",
            "relay.bind",
            "relay.workers",
            "relay.backend",
            "relay.batch",
            "relay.recv_buffer_bytes",
            "relay.send_buffer_bytes",
            "relay.stall_threshold_ms",
            "relay.max_datagram_bytes",
            "control.admin_listen",
            "control.admin_token",
            "control.admin_token_file",
            "control.public_listen",
            "control.public_addresses",
            "control.state_dir",
            "control.audit_log",
            "control.audit_retention_days",
            "control.audit_max_bytes",
            "control.slow_path",
            "control.slow_path_rate",
            "control.slow_path_per_source_rate",
            "control.ice_consent_timeout_secs",
            "control.master_key_file",
            "control.cors_allow_origin",
            "control.bootstrap_app",
            "control.dtls_max_handshakes",
            "control.dtls_max_handshakes_per_ip",
            "control.dtls_handshake_timeout_secs",
            "control.signaling_timeout_secs",
            "control.max_sessions_per_subject",
            "control.max_sessions_per_room",
            "control.demo_tokens",
            "control.token_leeway_secs",
            "control.token_max_lifetime_secs",
            "shm.path",
            "shm.sessions",
            "shm.routes",
            "shm.worker_slots",
            "shm.streams_per_worker",
            "srtp.replay_window",
            "srtp.kdr",
            "srtp.max_streams",
            "srtp.rotation_grace",
            "cluster.redis_url",
            "cluster.node_id",
            "cluster.region",
            "cluster.advertise_url",
            "cluster.heartbeat_ms",
            "cluster.entry_ttl_ms",
            "cluster.key_prefix",
        ] {
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/CONFIG.md lacks `{key}`"
            );
        }
    }
}
