#!/usr/bin/env python3
"""Split a server's `perf record -g` samples into where a relay's CPU goes per packet out.

    perf script -i FILE.perf.data | scripts/bench-perf-split.py [--packets N]

Each sample is put in the first class whose test its call chain meets, leaf to root:

- receivers: the receiving sockets' IP/UDP stack run inside this process (veth and loopback
  deliver to the peer inline: process_backlog, __netif_receive_skb, ip_rcv, udp_rcv, ...);
- send: the process's own transmit path (sendmmsg, sendmsg, sendto, their kernel work);
- recv: its receive system calls (recvmmsg, recvmsg, recvfrom, AF_XDP ring reads);
- wait: sleeping and waking (epoll_wait, poll, futex, nanosleep, schedule);
- user: the rest in user space (forwarding, SRTP, the server's own logic);
- other: the rest in the kernel (timers, page faults, ...).

Prints one line per class: samples and share and, with --packets and --cpu-s (packets out and
the process's CPU seconds, from /proc/PID/stat, over the recording), microseconds per packet
out: the class's share of that CPU time.
"""

import argparse
import re
import sys

RECEIVERS = re.compile(
    r"^(process_backlog|__netif_receive_skb\w*|netif_receive_skb\w*|ip_rcv\w*|ip_local_deliver\w*"
    r"|udp_rcv|__udp4_lib_rcv|udp_unicast_rcv_skb|udp_queue_rcv_skb|__udp_enqueue_schedule_skb"
    r"|sock_def_readable|veth_xmit|__netif_rx|netif_rx\w*|net_rx_action|do_softirq\w*|__do_softirq"
    r"|handle_softirqs)$"
)
SEND = re.compile(r"^(__sys_sendmmsg|__x64_sys_sendmmsg|__sys_sendmsg|__x64_sys_sendmsg|__sys_sendto"
                  r"|__x64_sys_sendto|udp_sendmsg|ip_output|ip_finish_output2|dev_queue_xmit"
                  r"|__dev_queue_xmit|xsk_sendmsg|xsk_generic_xmit|__xsk_sendmsg)$")
RECV = re.compile(r"^(__sys_recvmmsg|__x64_sys_recvmmsg|__sys_recvmsg|__x64_sys_recvmsg|__sys_recvfrom"
                  r"|__x64_sys_recvfrom|udp_recvmsg|xsk_recvmsg)$")
WAIT = re.compile(r"^(__x64_sys_epoll_wait|do_epoll_wait|__x64_sys_poll|do_sys_poll|__x64_sys_ppoll"
                  r"|__x64_sys_futex|futex_wait\w*|futex_wake\w*|__x64_sys_nanosleep|__x64_sys_clock_nanosleep"
                  r"|schedule|__schedule|schedule_hrtimeout_range\w*|try_to_wake_up)$")
ORDER = ["receivers", "send", "recv", "wait", "user", "other"]


def classify(frames):
    """frames: (symbol, dso) leaf first."""
    syms = [s for s, _ in frames]
    # The receivers' stack can run under our send (veth, loopback): look for it first.
    if any(RECEIVERS.match(s) for s in syms):
        return "receivers"
    for s in syms:
        if SEND.match(s):
            return "send"
        if RECV.match(s):
            return "recv"
        if WAIT.match(s):
            return "wait"
    leaf_dso = frames[0][1] if frames else ""
    return "other" if "kernel" in leaf_dso else "user"


def samples(lines):
    frames, header = [], None
    for line in lines:
        if not line.strip():
            if header is not None:
                yield frames
            frames, header = [], None
            continue
        if not line.startswith((" ", "\t")):
            header = line
            frames = []
            continue
        m = re.match(r"\s*[0-9a-f]+\s+(\S+?)(?:\+0x[0-9a-f]+)?\s+\((.*)\)\s*$", line)
        if m:
            frames.append((m.group(1), m.group(2)))
    if header is not None:
        yield frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=float, default=0.0, help="packets out during the recording")
    ap.add_argument("--cpu-s", type=float, default=0.0, help="the process's CPU seconds then")
    a = ap.parse_args()
    counts = dict.fromkeys(ORDER, 0)
    for frames in samples(sys.stdin):
        counts[classify(frames)] += 1
    total = sum(counts.values()) or 1
    for k in ORDER:
        share = counts[k] / total
        line = f"{k:<10} {counts[k]:>7} samples {share * 100:6.1f} %"
        if a.packets > 0 and a.cpu_s > 0:
            line += f"  {share * a.cpu_s * 1e6 / a.packets:7.2f} µs per packet out"
        print(line)
    if a.packets > 0 and a.cpu_s > 0:
        print(f"{'total':<10} {total:>7} samples  100.0 %  {a.cpu_s * 1e6 / a.packets:7.2f} µs per packet out")


if __name__ == "__main__":
    main()
