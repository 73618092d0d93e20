//! The XDP program of the `xdp` backend and the kernel objects around it: an `XSKMAP` (one
//! slot per receive queue), the program itself (assembled here from raw BPF instructions, so
//! the build needs no BPF toolchain and nothing generated is checked in) and the BPF link that
//! attaches it to the interface. Closing the link's fd (dropping [`XdpProgram`]) detaches it.
//!
//! The program redirects to the queue's AF_XDP socket exactly the frames the relay owns:
//! untagged Ethernet, IPv4 without options and not fragmented, UDP to the relay's port (and
//! address). Everything else — ARP, ICMP, IPv6, fragments, other ports, a queue without a
//! socket — passes to the kernel's stack as before (`bpf_redirect_map` with `XDP_PASS` as
//! its fallback action).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `bpf(2)` commands used here.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE` / `XDP_FLAGS_DRV_MODE`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_PASS`.
const XDP_PASS: i32 = 2;
/// `BPF_FUNC_redirect_map`.
const FUNC_REDIRECT_MAP: i32 = 51;

/// Where the program runs: in the driver (native XDP) or after the kernel built an skb
/// (generic XDP, every driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
        }
    }
}

/// The loaded program, its map and its attachment.
#[derive(Debug)]
pub struct XdpProgram {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    mode: AttachMode,
}

/// One `bpf(2)` call on a zeroed 128-byte attribute block.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: attr is a live, writable 128-byte block, which covers every `union bpf_attr`
    // member the commands above read or write; the kernel reads only the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful bpf(2) call and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// One BPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// `BPF_LDX | BPF_MEM | size` (w = 4, h = 2, b = 1 bytes).
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
/// ALU64: `mov dst, src`, `mov dst, imm`, `add dst, imm`, `and dst, imm`.
const MOV_X: u8 = 0xbf;
const MOV_K: u8 = 0xb7;
const ADD_K: u8 = 0x07;
const AND_K: u8 = 0x57;
/// `JMP: jgt dst, src` (64-bit), `JMP32: jne dst, imm` (32-bit compare, no sign extension).
const JGT_X: u8 = 0x2d;
const JNE32_K: u8 = 0x56;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// The program's instructions for UDP `port` (and IPv4 `addr`, unless unspecified), with the
/// `XSKMAP` fd `map` in its one map load. Frame layout: Ethernet 0..14, IPv4 14..34 (no
/// options), UDP 34..42. Loads are little-endian, so network-order constants are swapped.
pub fn program(map: RawFd, port: u16, addr: Ipv4Addr) -> Vec<Insn> {
    /// Placeholder offset of a jump to the `pass` label, fixed up below.
    const TO_PASS: i16 = i16::MIN;
    let mut p = vec![
        insn(MOV_X, 6, 1, 0, 0),              // r6 = ctx
        insn(LDX_W, 2, 1, 0, 0),              // r2 = ctx->data
        insn(LDX_W, 3, 1, 4, 0),              // r3 = ctx->data_end
        insn(MOV_X, 4, 2, 0, 0),              // r4 = data
        insn(ADD_K, 4, 0, 0, 42),             // r4 += eth + ip + udp
        insn(JGT_X, 4, 3, TO_PASS, 0),        // short frame
        insn(LDX_H, 5, 2, 12, 0),             // ethertype
        insn(JNE32_K, 5, 0, TO_PASS, 0x0008), // != 0x0800 (IPv4)
        insn(LDX_B, 5, 2, 14, 0),             // version / IHL
        insn(JNE32_K, 5, 0, TO_PASS, 0x45),   // IPv4 without options only
        insn(LDX_B, 5, 2, 23, 0),             // protocol
        insn(JNE32_K, 5, 0, TO_PASS, 17),     // UDP only
        insn(LDX_H, 5, 2, 20, 0),             // flags / fragment offset
        insn(AND_K, 5, 0, 0, 0xff3f),         // MF bit and offset
        insn(JNE32_K, 5, 0, TO_PASS, 0),      // fragments go to the kernel
        insn(LDX_H, 5, 2, 36, 0),             // UDP destination port
        insn(JNE32_K, 5, 0, TO_PASS, port.swap_bytes() as i32),
    ];
    if !addr.is_unspecified() {
        p.push(insn(LDX_W, 5, 2, 30, 0)); // IPv4 destination
        p.push(insn(
            JNE32_K,
            5,
            0,
            TO_PASS,
            u32::from_ne_bytes(addr.octets()) as i32,
        ));
    }
    p.extend([
        insn(LDX_W, 2, 6, 16, 0), // key: ctx->rx_queue_index
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV_K, 3, 0, 0, XDP_PASS), // no socket on this queue: pass
        insn(CALL, 0, 0, 0, FUNC_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let pass = p.len();
    p.push(insn(MOV_K, 0, 0, 0, XDP_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    for (pc, i) in p.iter_mut().enumerate() {
        if i.off == TO_PASS {
            i.off = (pass - pc - 1) as i16;
        }
    }
    p
}

/// How many receive queues `ifname` has (`/sys/class/net/IF/queues/rx-*`), at least 1.
pub fn rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

impl XdpProgram {
    /// Create the map (`queues` slots), load the program and attach it to `ifindex`: native
    /// (driver) mode first, generic mode when the driver has no XDP support.
    pub fn load(ifindex: u32, queues: u32, port: u16, addr: Ipv4Addr) -> io::Result<XdpProgram> {
        let mut a = [0u8; 128];
        put32(&mut a, 0, BPF_MAP_TYPE_XSKMAP);
        put32(&mut a, 4, 4); // key: queue index
        put32(&mut a, 8, 4); // value: socket fd
        put32(&mut a, 12, queues.max(1));
        a[28..28 + 10].copy_from_slice(b"sluice_xsk"); // map_name
        let map = owned(bpf(BPF_MAP_CREATE, &mut a)?);

        let insns = program(map.as_raw_fd(), port, addr);
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut a = [0u8; 128];
        put32(&mut a, 0, BPF_PROG_TYPE_XDP);
        put32(&mut a, 4, insns.len() as u32);
        put64(&mut a, 8, insns.as_ptr() as u64);
        put64(&mut a, 16, license.as_ptr() as u64);
        put32(&mut a, 24, 1); // log_level
        put32(&mut a, 28, log.len() as u32);
        put64(&mut a, 32, log.as_mut_ptr() as u64);
        a[48..48 + 10].copy_from_slice(b"sluice_xdp");
        put32(&mut a, 68, BPF_XDP); // expected_attach_type
        let prog = match bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => owned(fd),
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}; verifier: {}", text.trim()),
                ));
            }
            Err(e) => return Err(e),
        };

        let mut last = None;
        for (flags, mode) in [
            (XDP_FLAGS_DRV_MODE, AttachMode::Driver),
            (XDP_FLAGS_SKB_MODE, AttachMode::Generic),
        ] {
            let mut a = [0u8; 128];
            put32(&mut a, 0, prog.as_raw_fd() as u32);
            put32(&mut a, 4, ifindex);
            put32(&mut a, 8, BPF_XDP);
            put32(&mut a, 12, flags);
            match bpf(BPF_LINK_CREATE, &mut a) {
                Ok(fd) => {
                    return Ok(XdpProgram {
                        map,
                        _prog: prog,
                        _link: owned(fd),
                        mode,
                    })
                }
                // EBUSY: another program is attached; no use trying the other mode.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e}: another XDP program is attached to the interface"),
                    ))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::Unsupported)))
    }

    /// The mode the program was attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Steer receive queue `queue` to the AF_XDP socket `xsk`.
    pub fn insert(&self, queue: u32, xsk: RawFd) -> io::Result<()> {
        let key = queue;
        let val = xsk as u32;
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.map.as_raw_fd() as u32);
        put64(&mut a, 8, &key as *const u32 as u64);
        put64(&mut a, 16, &val as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
    }

    /// Stop steering `queue` (its socket is closing); frames on it go to the kernel again.
    pub fn remove(&self, queue: u32) {
        let key = queue;
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.map.as_raw_fd() as u32);
        put64(&mut a, 8, &key as *const u32 as u64);
        let _ = bpf(BPF_MAP_DELETE_ELEM, &mut a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_pass() {
        let p = program(3, 4443, Ipv4Addr::new(10, 0, 0, 1));
        let pass = p.len() - 2;
        for (pc, i) in p.iter().enumerate() {
            if i.code == JGT_X || i.code == JNE32_K {
                assert_eq!(pc as i64 + 1 + i.off as i64, pass as i64, "insn {pc}");
            }
        }
        // Port 4443 = 0x115b, loaded little-endian as 0x5b11.
        assert!(p.iter().any(|i| i.code == JNE32_K && i.imm == 0x5b11));
        // The wildcard address adds no address check.
        assert_eq!(program(3, 1, Ipv4Addr::UNSPECIFIED).len(), p.len() - 2);
    }
}
