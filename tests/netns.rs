//! Network namespaces for end-to-end tests with real network conditions: a bridge in the root
//! namespace with an address from a private range chosen here (`10.213.N.1/24`, a `N` no
//! interface uses yet), one namespace per peer joined to the bridge by a veth pair
//! (`10.213.N.2..`), impairment of one peer's link in both directions, and nftables rules
//! inside a peer's namespace. The daemons run in the root namespace on the bridge address; a
//! browser runs inside a peer's namespace through the wrapper script [`Net::chromium_wrapper`]
//! writes (`ip netns exec NS chromium …`, so the driver in the root namespace keeps its pipe
//! to it). Traffic stays inside the namespaces and bridge this module creates.
//!
//! Impairment ([`Net::impair`]): `tc netem` (loss, delay, rate) on both ends of the peer's veth
//! pair when the kernel has it. A kernel built without `CONFIG_NET_SCH_NETEM` (some CI and
//! cloud kernels) still gets real kernel-side loss and rate: random loss by an nftables
//! `numgen random` drop in the `netdev` ingress hook of both veth ends (a silent drop, as on a
//! wire; an `output` drop would return `EPERM` to the sender) and the rate by `tbf` on both
//! ends; delay then cannot be added, and [`Impaired`] says so for the test to report.
//!
//! Everything is removed on drop (also while a panic unwinds): processes still running in the
//! namespaces are killed, the namespaces (with their veth ends and nftables tables) and the
//! bridge deleted.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Why this host cannot build the namespaces, if it cannot: not root, or `ip`, `tc` or `nft`
/// missing.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    for (tool, args, pkg) in [
        ("ip", &["-V"][..], "iproute2"),
        ("tc", &["-V"][..], "iproute2"),
        ("nft", &["--version"][..], "nftables"),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` not runnable (apt-get install {pkg})"));
        }
    }
    None
}

/// Run one command; its stderr as the error.
fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Load an nftables ruleset (`nft -f -`), inside namespace `ns` when given.
fn nft(ns: Option<&str>, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(rules.as_bytes())
        .map_err(|e| format!("nft stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this kernel has the netem qdisc (probed once, on a dummy device in a scratch
/// namespace).
pub fn netem_available() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let ns = format!("slnp{}", std::process::id());
        if sh(&["ip", "netns", "add", &ns]).is_err() {
            return false;
        }
        let ok = sh(&["ip", "-n", &ns, "link", "add", "p0", "type", "dummy"])
            .and_then(|_| {
                sh(&[
                    "tc", "-n", &ns, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms",
                ])
            })
            .is_ok();
        let _ = sh(&["ip", "netns", "del", &ns]);
        ok
    })
}

/// One peer's namespace and its link to the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    /// Namespace name (`ip netns exec NAME …`).
    pub ns: String,
    /// The peer's address on the bridge's subnet.
    pub ip: Ipv4Addr,
    /// The veth end in the root namespace (enslaved to the bridge): its egress is the peer's
    /// downlink.
    pub root_dev: String,
    /// The veth end inside the namespace: its egress is the peer's uplink.
    pub ns_dev: String,
}

/// Conditions for one peer's link, applied to each direction.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Random loss, percent of packets, per direction.
    pub loss_percent: f64,
    /// One-way delay added per direction (RTT grows by twice this).
    pub delay_ms: u32,
    /// Rate limit per direction, kbit/s.
    pub rate_kbit: Option<u32>,
}

/// How an [`Impairment`] was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Impaired {
    /// `"netem"`, or `"nftables+tbf"` on a kernel without netem.
    pub by: &'static str,
    /// False when a delay was asked for and could not be added (no netem).
    pub delay_applied: bool,
}

/// The bridge and the namespaces of one test. Removed on drop.
pub struct Net {
    tag: String,
    bridge: String,
    subnet: u8,
    hosts: Vec<Host>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// A bridge `10.213.N.1/24` in the root namespace, for a `N` no local address uses.
    pub fn new() -> Result<Net, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let used = sh(&["ip", "-o", "-4", "addr", "show"])?;
        let start = (std::process::id() + n * 37) % 250;
        let subnet = (0..250)
            .map(|i| ((start + i) % 250 + 1) as u8)
            .find(|s| !used.contains(&format!("10.213.{s}.")))
            .ok_or("no free 10.213.N.0/24 subnet")?;
        let net = Net {
            bridge: format!("slbr{tag}"),
            tag,
            subnet,
            hosts: Vec::new(),
        };
        sh(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.bridge_ip()),
            "dev",
            &net.bridge,
        ])?;
        sh(&["ip", "link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// The root namespace's address on the bridge (where the daemons listen).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// A new namespace joined to the bridge, with the next address and loopback up.
    pub fn add_host(&mut self) -> Result<Host, String> {
        let i = self.hosts.len() + 1;
        if i > 200 {
            return Err("at most 200 hosts per bridge".into());
        }
        let h = Host {
            ns: format!("sluice-{}-{i}", self.tag),
            ip: Ipv4Addr::new(10, 213, self.subnet, i as u8 + 1),
            root_dev: format!("slr{}h{i}", self.tag),
            ns_dev: format!("sln{}h{i}", self.tag),
        };
        sh(&["ip", "netns", "add", &h.ns])?;
        // Recorded before the rest, so that drop removes the namespace whatever fails next.
        self.hosts.push(h.clone());
        sh(&[
            "ip",
            "link",
            "add",
            &h.root_dev,
            "type",
            "veth",
            "peer",
            "name",
            &h.ns_dev,
            "netns",
            &h.ns,
        ])?;
        sh(&["ip", "link", "set", &h.root_dev, "master", &self.bridge])?;
        sh(&["ip", "link", "set", &h.root_dev, "up"])?;
        sh(&[
            "ip",
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/24", h.ip),
            "dev",
            &h.ns_dev,
        ])?;
        sh(&["ip", "-n", &h.ns, "link", "set", &h.ns_dev, "up"])?;
        sh(&["ip", "-n", &h.ns, "link", "set", "lo", "up"])?;
        Ok(h)
    }

    /// Impair `host`'s link in both directions (see the module doc for how).
    pub fn impair(&self, host: &Host, imp: Impairment) -> Result<Impaired, String> {
        // (namespace of the device, device): the root end shapes the downlink, the namespace
        // end the uplink.
        let ends = [
            (None, host.root_dev.as_str()),
            (Some(host.ns.as_str()), &host.ns_dev),
        ];
        let tc = |ns: Option<&str>, rest: &[&str]| -> Result<String, String> {
            let mut args = vec!["tc"];
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            args.extend(rest);
            sh(&args)
        };
        // Rate by tbf in both cases (netem's own `rate` queues up to its whole limit):
        // bucket of at least one MTU and then some, at most 200 ms queued at the rate.
        let tbf = |ns: Option<&str>, dev: &str, parent: &[&str], r: u32| {
            let rate = format!("{r}kbit");
            let burst = format!("{}", (r as usize * 1000 / 8 / 50).max(4000));
            let mut args = vec!["qdisc", "replace", "dev", dev];
            args.extend(parent);
            args.extend(["tbf", "rate", &rate, "burst", &burst, "latency", "200ms"]);
            tc(ns, &args)
        };
        if netem_available() {
            let loss = format!("{}%", imp.loss_percent);
            let delay = format!("{}ms", imp.delay_ms);
            for (ns, dev) in ends {
                tc(
                    ns,
                    &[
                        "qdisc", "replace", "dev", dev, "root", "handle", "1:", "netem", "limit",
                        "10000", "loss", &loss, "delay", &delay,
                    ],
                )?;
                if let Some(r) = imp.rate_kbit {
                    tbf(ns, dev, &["parent", "1:1", "handle", "10:"], r)?;
                }
            }
            return Ok(Impaired {
                by: "netem",
                delay_applied: true,
            });
        }
        if let Some(r) = imp.rate_kbit {
            for (ns, dev) in ends {
                tbf(ns, dev, &["root"], r)?;
            }
        }
        if imp.loss_percent > 0.0 {
            let per_10k = (imp.loss_percent * 100.0).round() as u32;
            for (ns, dev) in ends {
                nft(
                    ns,
                    &format!(
                        "table netdev sluice_loss_{dev} {{\n\
                         chain ingress {{ type filter hook ingress device \"{dev}\" priority 0; policy accept;\n\
                         numgen random mod 10000 < {per_10k} drop\n}}\n}}\n"
                    ),
                )?;
            }
        }
        Ok(Impaired {
            by: "nftables+tbf",
            delay_applied: imp.delay_ms == 0,
        })
    }

    /// Lift a rate limit [`Net::impair`] put on `host`'s link (both ends' root qdisc back to
    /// the default). The nftables loss rules, if any, stay.
    pub fn lift(&self, host: &Host) -> Result<(), String> {
        sh(&["tc", "qdisc", "del", "dev", &host.root_dev, "root"])?;
        sh(&[
            "tc",
            "-n",
            &host.ns,
            "qdisc",
            "del",
            "dev",
            &host.ns_dev,
            "root",
        ])?;
        Ok(())
    }

    /// Drop every UDP datagram `host` sends to `to` (nftables, inside the host's namespace).
    pub fn drop_udp_to(&self, host: &Host, to: Ipv4Addr) -> Result<(), String> {
        nft(
            Some(&host.ns),
            &format!(
                "table inet sluice_block {{\n\
                 chain out {{ type filter hook output priority 0; policy accept;\n\
                 ip daddr {to} meta l4proto udp counter drop\n}}\n}}\n"
            ),
        )
    }

    /// Packets the [`Net::drop_udp_to`] rule of `host` dropped so far.
    pub fn udp_dropped(&self, host: &Host) -> Result<u64, String> {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &host.ns,
            "nft",
            "list",
            "table",
            "inet",
            "sluice_block",
        ])?;
        let n = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no counter in {out}"))?;
        Ok(n)
    }

    /// An executable script in `dir` that runs `chromium` (with its arguments) inside `host`'s
    /// namespace; hand it to the browser driver as `SLUICE_CHROMIUM` or a spec's `chromium`.
    pub fn chromium_wrapper(&self, host: &Host, dir: &Path, chromium: &str) -> PathBuf {
        let p = dir.join(format!("chromium-in-{}", host.ns));
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\n# Chromium inside network namespace {ns}.\nexec ip netns exec {ns} {chromium} \"$@\"\n",
                ns = host.ns
            ),
        )
        .expect("write wrapper");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Anything still running in the namespace was started by this test (a browser
            // whose driver was killed leaves its children behind).
            if let Ok(pids) = sh(&["ip", "netns", "pids", &h.ns]) {
                for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                    crate::daemons::signal_pid(pid, rustix::process::Signal::KILL);
                }
            }
            let _ = sh(&["ip", "netns", "del", &h.ns]);
            // Normally gone with its peer; a half-made host may have left it.
            let _ = sh(&["ip", "link", "del", &h.root_dev]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}
