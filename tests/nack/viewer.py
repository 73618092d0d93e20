"""A libsrtp (pylibsrtp) viewer for tests/nack_e2e.rs.

It receives one SRTP stream from the relay, drops a share of the packets on purpose (before
decrypting them, as the network would), NACKs each dropped packet (RFC 4585 generic NACK, in an
SRTCP compound after an empty receiver report), repeats the NACK while the packet is missing,
and accepts retransmissions either as the original packet or as RFC 4588 RTX on a given SSRC.
It prints one JSON line with what it saw.

Arguments: relay_port bind_port rx_key_hex tx_key_hex count drop_rate seed media_ssrc rtx_ssrc
(rtx_ssrc 0 = no RTX expected).
"""

import json
import random
import socket
import struct
import sys
import time

import pylibsrtp

SENDER_SSRC = 0x5EE5_0001


def nack(media_ssrc, seqs):
    """An empty RR and a generic NACK for `seqs` (a PID/BLP pair per run of 17)."""
    rr = struct.pack("!BBHI", 0x80, 201, 1, SENDER_SSRC)
    pairs = []
    seqs = sorted(seqs)
    i = 0
    while i < len(seqs):
        pid, blp = seqs[i], 0
        i += 1
        while i < len(seqs) and 0 < (seqs[i] - pid) & 0xFFFF <= 16:
            blp |= 1 << (((seqs[i] - pid) & 0xFFFF) - 1)
            i += 1
        pairs.append(struct.pack("!HH", pid, blp))
    body = struct.pack("!II", SENDER_SSRC, media_ssrc) + b"".join(pairs)
    fb = struct.pack("!BBH", 0x80 | 1, 205, len(body) // 4) + body
    return rr + fb


def main():
    (relay_port, bind_port, rx_hex, tx_hex, count, drop, seed, media_ssrc, rtx_ssrc) = sys.argv[1:]
    relay = ("127.0.0.1", int(relay_port))
    count, drop, media_ssrc, rtx_ssrc = int(count), float(drop), int(media_ssrc), int(rtx_ssrc)
    rx = pylibsrtp.Session(
        pylibsrtp.Policy(key=bytes.fromhex(rx_hex), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    )
    tx = pylibsrtp.Session(
        pylibsrtp.Policy(key=bytes.fromhex(tx_hex), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    )
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", int(bind_port)))
    s.settimeout(0.01)
    print("ready", flush=True)
    rng = random.Random(int(seed))
    seen, got, dropped, recovered = set(), set(), {}, set()
    rtx_seqs, latencies, nacks_sent, errors = [], [], 0, 0
    last = time.monotonic()
    start = last
    while time.monotonic() - last < 2.0 and time.monotonic() - start < 60:
        now = time.monotonic()
        # NACK (again) what is still missing: first right away, then every 100 ms, 10 times.
        due = [q for q, d in dropped.items() if q not in recovered and d["next"] <= now and d["tries"] < 10]
        if due:
            for q in due:
                d = dropped[q]
                if d["tries"] == 0:
                    d["first"] = now
                d["tries"] += 1
                d["next"] = now + 0.1
            for i in range(0, len(due), 32):
                s.sendto(tx.protect_rtcp(nack(media_ssrc, due[i : i + 32])), relay)
                nacks_sent += 1
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            continue
        last = time.monotonic()
        if len(data) < 12 or data[1] >= 192 and data[1] <= 223:
            continue
        ssrc = struct.unpack("!I", data[8:12])[0]
        seq = struct.unpack("!H", data[2:4])[0]
        if ssrc == media_ssrc and seq not in seen and rng.random() < drop:
            # Lost on the way: never decrypted, so libsrtp's replay list does not know it.
            seen.add(seq)
            dropped[seq] = {"next": time.monotonic(), "tries": 0, "first": None}
            continue
        seen.add(seq)
        try:
            plain = rx.unprotect(data)
        except Exception:
            errors += 1
            continue
        if rtx_ssrc and ssrc == rtx_ssrc:
            # RFC 4588 §4: the original sequence number leads the RTX payload.
            hlen = 12 + 4 * (plain[0] & 0x0F)
            seq = struct.unpack("!H", plain[hlen : hlen + 2])[0]
            rtx_seqs.append(struct.unpack("!H", plain[2:4])[0])
        elif ssrc != media_ssrc:
            continue
        got.add(seq)
        if seq in dropped and seq not in recovered:
            recovered.add(seq)
            if dropped[seq]["first"] is not None:
                latencies.append((time.monotonic() - dropped[seq]["first"]) * 1000)
        if len(got) == count and len(recovered) == len(dropped):
            break
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
    print(
        json.dumps(
            {
                "received": len(got),
                "dropped": sorted(dropped),
                "recovered": len(recovered),
                "nacks_sent": nacks_sent,
                "rtx_seqs": rtx_seqs,
                "errors": errors,
                "p99_ms": p99,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
