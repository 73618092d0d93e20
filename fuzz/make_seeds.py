#!/usr/bin/env python3
"""Seed corpus for the control-plane and crypto fuzz targets (docs/FUZZING.md).

The wire targets' seeds are written by relay/tests/wire_fuzz_seeds.rs; this script writes the
seeds of srtp_unprotect, shm_open, config, slowpath, sdp, token, api_body and ice, which
need no Rust API to build (each target's input layout is documented at its top). Standard
library only; deterministic output. Run from anywhere: `python3 fuzz/make_seeds.py`.
"""
import base64
import hashlib
import hmac
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed_" + name), "wb") as f:
        f.write(data)


def rtp(seq, ssrc, payload, pt=96):
    return struct.pack(">BBHII", 0x80, pt, seq, seq * 960, ssrc) + payload


# srtp_unprotect: byte 0 profile index (Profile::ALL order), byte 1 option flags,
# bytes 2..48 key material, then the packet.
PROFILES = ["aes128_80", "aes128_32", "aes256_80", "aes256_32", "gcm128", "gcm256"]
for i, name in enumerate(PROFILES):
    key = bytes((i * 31 + j * 7) & 0xFF for j in range(46))
    put("srtp_unprotect", "rtp_" + name, bytes([i, 0x01]) + key + rtp(1, 0x1234, b"\x11" * 40))
    sr = struct.pack(">BBHI", 0x80, 200, 6, 0x1234) + bytes(20)
    put("srtp_unprotect", "rtcp_" + name, bytes([i, 0x06]) + key + sr)

# shm_open: byte 0 odd = patch the valid template at (u16 LE offset, xor) triples; even = the
# raw bytes are the file (bit 2: zero-extended to the file size the header declares); byte 0
# >= 0xf0 also opens refused images as files.
put("shm_open", "template", b"\x01")
put("shm_open", "template_adopt", b"\x03")
put("shm_open", "patch_header", b"\x01" + struct.pack("<HB", 8, 0x01) + struct.pack("<HB", 16, 0x80))
put("shm_open", "patch_slot", b"\x03" + struct.pack("<HB", 4096 + 8, 0x01))
put("shm_open", "raw_magic", b"\x00" + b"SLUICESH" + bytes(56))
put("shm_open", "raw_magic_as_file", b"\xf0" + b"SLUICESH" + bytes(56))
put("shm_open", "patch_locked_slot", b"\x03" + struct.pack("<HB", 4096, 0x01))
# A valid header for 1 session, 1 route, 1 worker with 1 stream-state slot (ABI 3; offsets as
# relay/src/shm/layout.rs computes them), empty tables once zero-extended to its 24 KiB.
header = (
    b"SLUICESH"
    + struct.pack("<IIIII", 3, 4096, 192, 128, 576)
    + struct.pack("<III", 1, 1, 1)
    + struct.pack("<QQQQ", 4096, 8192, 12288, 24576)
    + struct.pack("<IIII", 0, 64, 1, 0)
    + struct.pack("<Q", 16384)
)
put("shm_open", "raw_header_extended", b"\x04" + header)

# config: real files.
put("config", "minimal", "[relay]\nbind = \"127.0.0.1:4443\"\nworkers = 2\n")
put(
    "config",
    "full",
    'runtime_dir = "/run/sluice"\n'
    "[relay]\nbind = \"[::1]:4443\"\nbackend = \"mmsg\"\nbatch = 32\n"
    "[control]\nadmin_listen = \"unix:/run/sluice/admin.sock\"\n"
    'admin_token_file = "/etc/sluice/admin.token"\nstate_dir = "/var/lib/sluice"\n'
    "slow_path_rate = 20000\nslow_path_per_source_rate = 200\n"
    "[shm]\npath = \"/dev/shm/sluice\"\nsessions = 1024\nroutes = 4096\n"
    "[srtp]\nreplay_window = 1024\n",
)
example = os.path.join(os.path.dirname(ROOT), "..", "systemd", "sluice.toml")
if os.path.exists(example):
    with open(example, "rb") as f:
        put("config", "systemd_example", f.read())


# slowpath: 28-byte header (version, kind, worker, family, 0, port, local port, 0, 0, address)
# then the datagram.
def slow(kind, worker, peer, local_port, payload):
    h = bytearray(28)
    h[0] = 1
    h[1] = kind
    h[2:4] = struct.pack(">H", worker)
    h[8:10] = struct.pack(">H", local_port)
    if peer is not None:
        fam, ip, port = peer
        h[4] = fam
        h[6:8] = struct.pack(">H", port)
        h[12 : 12 + len(ip)] = ip
    return bytes(h) + payload


stun_req = struct.pack(">HHI", 1, 0, 0x2112A442) + bytes(range(12))
put("slowpath", "hello", slow(1, 3, None, 4443, b""))
put("slowpath", "up_v4", slow(2, 0, (4, bytes([192, 0, 2, 1]), 5000), 4443, stun_req))
put("slowpath", "down_v6", slow(3, 1, (6, bytes.fromhex("20010db8000000000000000000000001"), 6000), 4443, b"\x16\xfe\xfd" + bytes(10)))

# sdp: a browser-style WHIP offer and a WHEP (recvonly) one.
FP = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E"


def offer(direction):
    return (
        "v=0\r\no=- 4215775240449105457 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=ice-options:trickle\r\n"
        f"a=fingerprint:{FP}\r\na=setup:actpass\r\na=mid:0\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        f"a={direction}\r\na=msid:stream track-a\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=ssrc:3735928559 cname:abc\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\nc=IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n"
        f"a=fingerprint:{FP}\r\na=setup:actpass\r\na=mid:1\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
        f"a={direction}\r\na=msid:stream track-v\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
        "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n"
        "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
        "a=rtpmap:102 H264/90000\r\n"
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        "a=ssrc-group:FID 1111 2222\r\na=ssrc:1111 cname:abc\r\na=ssrc:2222 cname:abc\r\n"
    )


put("sdp", "whip_offer", offer("sendonly"))
put("sdp", "whep_offer", offer("recvonly"))

# token: byte 0 selects intent/policy, the rest is the token text (tried as HS256 and Storm).
NOW = 1_700_000_000
SECRET = b"sluice-fuzz-developer-secret-0123456789"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, kid="k1"):
    h = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}, separators=(",", ":")).encode())
    p = b64u(json.dumps(claims, separators=(",", ":")).encode())
    s = b64u(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest())
    return f"{h}.{p}.{s}"


host = {"sub": "alice", "app": "app1", "room": "room1", "role": "host", "exp": NOW + 600, "nbf": NOW - 10, "iat": NOW - 10}
viewer = dict(host, sub="bob", role="viewer", email="bob@example.com")
put("token", "signed_host", b"\x00" + jwt(host).encode())
put("token", "signed_viewer_email", b"\x03" + jwt(viewer).encode())
put("token", "signed_expired", b"\x00" + jwt(dict(host, exp=NOW - 100, nbf=NOW - 700, iat=NOW - 700)).encode())
minute = NOW - NOW % 60
put("token", "stream", b"\x51" + hashlib.md5(f"{minute}storm-password".encode()).hexdigest().encode())
put("token", "stream_ip", b"\x5d" + hashlib.md5(f"{minute}storm-password198.51.100.9".encode()).hexdigest().encode())

# api_body: byte 0 % 3 selects POST /v1/sessions, /v1/sessions/1/rekey, /v1/routes.
k30 = base64.b64encode(bytes(range(30))).decode()
k28 = base64.b64encode(bytes(range(28))).decode()
put("api_body", "session", b"\x00" + json.dumps({"peer": "127.0.0.1:7000", "profile": "AES_CM_128_HMAC_SHA1_80", "rx_key": k30, "tx_key": k30, "role": "speaker", "max_pps": 100}).encode())
put("api_body", "session_v6_gcm", b"\x00" + json.dumps({"peer": "[::1]:7001", "profile": "AEAD_AES_128_GCM", "rx_key": k28, "tx_key": k28}).encode())
put("api_body", "rekey", b"\x01" + json.dumps({"tx_key": k30, "rx_key": k30}).encode())
put("api_body", "route", b"\x02" + json.dumps({"from": 1, "ssrc": 4660, "to": 2, "rewrite": {"ssrc": 99, "pt_map": [[96, 100]], "ext_map": [[1, 3]]}}).encode())


# ice: byte 0 flags (bits 0-1 USERNAME choice, 2-3 integrity key, 4 no FINGERPRINT, 5 flip a
# bit, 6 indication, 7 raw datagram), 12-byte transaction id, then (type u16, len u8, value)
# attribute records.
def attr(t, v):
    return struct.pack(">HB", t, len(v)) + v


txid = bytes(range(1, 13))
attrs = attr(0x0024, struct.pack(">I", 1845501695)) + attr(0x802A, bytes(8))
put("ice", "check", b"\x00" + txid + attrs)
put("ice", "nominate", b"\x01" + txid + attrs + attr(0x0025, b""))
put("ice", "wrong_key", b"\x08" + txid + attrs)
put("ice", "flipped", b"\x20" + txid + attrs + b"\x07")


def raw_binding():
    body = attr_raw(0x0006, b"ufrag1:remote1")
    msg = struct.pack(">HHI", 1, len(body) + 8, 0x2112A442) + txid + body
    fp = (zlib.crc32(msg) ^ 0x5354554E) & 0xFFFFFFFF
    return msg + struct.pack(">HHI", 0x8028, 4, fp)


def attr_raw(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack(">HH", t, len(v)) + v + bytes(pad)


put("ice", "raw_no_integrity", b"\x80" + raw_binding())
