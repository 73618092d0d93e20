#!/usr/bin/env python3
"""Independent SRTP peer for Sluice's cross-check tests: libsrtp through pylibsrtp.

Usage: libsrtp_peer.py PROFILE KEY_HEX
  PROFILE is an IANA name (AES_CM_128_HMAC_SHA1_80, ...); KEY_HEX is master key || salt.
  Reads lines "OP HEX" from stdin, OP in protect, unprotect, protect_rtcp, unprotect_rtcp;
  writes one line per input: the resulting packet in hex, or "ERR <reason>".
  Protect ops use an outbound session, unprotect ops an inbound one (any SSRC), so ROC,
  SRTCP index and replay state persist across lines as in a real peer.
Exit 77 with "SKIP: <why>" on stderr when pylibsrtp or the profile is unavailable.
"""
import sys

try:
    import pylibsrtp
except ImportError as e:  # pragma: no cover - environment dependent
    sys.stderr.write("SKIP: pylibsrtp not importable (%s)\n" % e)
    sys.exit(77)

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": "SRTP_PROFILE_AES128_CM_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32": "SRTP_PROFILE_AES128_CM_SHA1_32",
    "AEAD_AES_128_GCM": "SRTP_PROFILE_AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM": "SRTP_PROFILE_AEAD_AES_256_GCM",
}


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--profiles":
        names = [n for n, attr in PROFILES.items() if hasattr(pylibsrtp.Policy, attr)]
        print(" ".join(names))
        print("pylibsrtp %s" % pylibsrtp.__version__, file=sys.stderr)
        return 0
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    name, key_hex = sys.argv[1], sys.argv[2]
    attr = PROFILES.get(name)
    if attr is None or not hasattr(pylibsrtp.Policy, attr):
        sys.stderr.write("SKIP: pylibsrtp has no profile %s\n" % name)
        return 77
    profile = getattr(pylibsrtp.Policy, attr)
    key = bytes.fromhex(key_hex)
    tx = pylibsrtp.Session(
        policy=pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    )
    rx_policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
    rx = pylibsrtp.Session(policy=rx_policy)
    ops = {
        "protect": tx.protect,
        "protect_rtcp": tx.protect_rtcp,
        "unprotect": rx.unprotect,
        "unprotect_rtcp": rx.unprotect_rtcp,
    }
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        op, data = line.split(" ", 1)
        try:
            out = ops[op](bytes.fromhex(data))
            sys.stdout.write(out.hex() + "\n")
        except Exception as e:  # libsrtp errors are reported, not fatal
            sys.stdout.write("ERR %s\n" % e)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
