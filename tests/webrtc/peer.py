#!/usr/bin/env python3
"""An independent WebRTC peer (aiortc) for Sluice's end-to-end test.

    peer.py publish URL TOKEN SECONDS      publish a synthetic VP8 video track and an Opus
                                            audio track (silence) through WHIP
    peer.py watch URL TOKEN FRAMES TIMEOUT [STALL]
                                            play a room through WHEP; exit 0 once FRAMES
                                            video frames were decoded; with STALL, then
                                            print `ready` and exit 0 once no frame came
                                            for STALL seconds (media stopped)
    peer.py publish-pli-only URL TOKEN SECONDS
                                            publish like `publish`, as a stack that only
                                            knows PLI: FIRs are ignored; prints
                                            `keyframe_request=pli|fir` for each request
    peer.py watch-fir URL TOKEN REQUESTS TIMEOUT
                                            watch as a stack that prefers FIR (offers
                                            `ccm fir`, asks for every keyframe with a FIR,
                                            never a PLI); once decoding, sends REQUESTS
                                            FIRs 1.5 s apart and prints
                                            `keyframe_after_ms=N` for each (the next VP8
                                            keyframe's arrival); exit 0 when all came
    peer.py publish-remb URL TOKEN SECONDS  publish like `publish`, but video of random blocks
                                            (VP8 spends about its target bitrate on it, so
                                            what is sent is what REMB allows);
                                            every second prints `remb=B rembs=N target=T
                                            sent_bps=S`: the last REMB bitrate received for
                                            the video SSRC, REMBs so far, the encoder's target
                                            bitrate and the video bytes sent that second (×8)
    peer.py watch-many URLS TOKENS FRAMES TIMEOUT
                                            many viewers in this one process, one
                                            RTCPeerConnection per URL of the comma-separated
                                            URLS (WHEP), each with the token at the same
                                            place in the comma-separated TOKENS (or the one
                                            token for all); each must decode FRAMES video
                                            frames; prints `viewer=I joined location=L`,
                                            `viewer=I decoded=N`, then `decoded_all=K/N`;
                                            exit 0 when all did within TIMEOUT

Both print one status line per event on stdout (`answer`, `connected`, `frames=N`, `left`)
and exit non-zero on failure. Exit code 3 means aiortc is not importable.

ICE candidates are restricted to 127.0.0.1 (aioice skips loopback by default), so all
traffic stays on loopback; SLUICE_AIORTC_HOST names another single address (a test
namespace's). With SLUICE_AIORTC_COUNT_NACKS set, `publish` prints `nacks_received=N` (sequence
numbers NACKed to it) and `watch` prints `nacks_sent=N` when they end.
"""
import asyncio
import fractions
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

try:
    import aioice.ice
    from aiortc import (
        AudioStreamTrack,
        RTCPeerConnection,
        RTCRtpSender,
        RTCSessionDescription,
        VideoStreamTrack,
    )
    from aiortc import codecs as aiortc_codecs
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtcrtpsender import RTCRtpSender as Sender
    from aiortc.rtcrtpparameters import RTCRtcpFeedback
    from aiortc.rtp import (
        RTCP_PSFB_APP,
        RTCP_PSFB_FIR,
        RTCP_PSFB_PLI,
        RtcpPsfbPacket,
        unpack_remb_fci,
    )
    from av import VideoFrame
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"aiortc not importable: {e}", file=sys.stderr)
    sys.exit(3)


def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list:
    # SLUICE_AIORTC_HOST: the one address to gather (a test namespace's); loopback otherwise.
    return [os.environ.get("SLUICE_AIORTC_HOST", "127.0.0.1")] if use_ipv4 else []


aioice.ice.get_host_addresses = loopback_only


class Pattern(VideoStreamTrack):
    """A moving colour pattern, 320x240 at 30 fps."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=320, height=240, format="yuv420p")
        y = (self.n * 7) % 256
        for i, plane in enumerate(frame.planes):
            val = y if i == 0 else 128
            plane.update(bytes([val]) * plane.buffer_size)
        self.n += 1
        frame.pts = pts
        frame.time_base = time_base or fractions.Fraction(1, 90000)
        return frame


class Blocks(VideoStreamTrack):
    """320x240 at 30 fps of fresh random 8x8 blocks of low contrast every frame: VP8 spends
    what its target bitrate allows on them (measured with aiortc's encoder: about 0.28, 0.49
    and 1.5 Mbit/s at targets of 0.25, 0.5 and 1.5 Mbit/s), so what is sent follows REMB."""

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=320, height=240, format="yuv420p")
        for i, plane in enumerate(frame.planes):
            width, height, block = (320, 240, 8) if i == 0 else (160, 120, 4)
            data = bytearray()
            for _ in range(height // block):
                row = bytes(112 + v % 32 for v in os.urandom(width // block) for _ in range(block))
                data += row * block
            plane.update(bytes(data))
        frame.pts = pts
        frame.time_base = time_base or fractions.Fraction(1, 90000)
        return frame


def http(method: str, url: str, token: str, body: bytes | None = None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def negotiate(pc: RTCPeerConnection, url: str, token: str):
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    status, headers, body = await asyncio.get_running_loop().run_in_executor(
        None, http, "POST", url, token, pc.localDescription.sdp.encode()
    )
    if status != 201:
        print(f"POST {url}: {status} {body}", file=sys.stderr)
        sys.exit(1)
    location = headers.get("Location") or headers.get("location")
    print("answer", flush=True)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    # Relative to the request's URL, or absolute (a cluster node answers with the owner's).
    return urllib.parse.urljoin(url, location)


def state_logger(pc: RTCPeerConnection):
    @pc.on("connectionstatechange")
    async def on_state():
        print(f"state={pc.connectionState}", flush=True)


async def publish(url: str, token: str, seconds: float):
    pc = RTCPeerConnection()
    state_logger(pc)
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")  # Opus, silence
    tr = pc.addTransceiver(Pattern(), direction="sendonly")
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "VP8"]
    tr.setCodecPreferences(vp8)
    location = await negotiate(pc, url, token)
    await asyncio.sleep(seconds)
    await asyncio.get_running_loop().run_in_executor(None, http, "DELETE", location, token)
    if NACKS is not None:
        print(f"nacks_received={NACKS['received']}", flush=True)
    print("left", flush=True)
    await pc.close()


async def publish_remb(url: str, token: str, seconds: float):
    """Publish block video and audio; report REMB received and the encoder's response."""
    rembs = {"last": 0, "count": 0}
    handle = Sender._handle_rtcp_packet

    async def recording(self, packet):
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
                if self._ssrc in ssrcs and self.kind == "video":
                    rembs["last"] = bitrate
                    rembs["count"] += 1
            except ValueError:
                pass
        await handle(self, packet)

    Sender._handle_rtcp_packet = recording
    pc = RTCPeerConnection()
    state_logger(pc)
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")  # Opus, silence
    tr = pc.addTransceiver(Blocks(), direction="sendonly")
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "VP8"]
    tr.setCodecPreferences(vp8)
    location = await negotiate(pc, url, token)
    sender = tr.sender
    sent = 0
    for _ in range(int(seconds)):
        await asyncio.sleep(1.0)
        total = sum(
            s.bytesSent for s in (await sender.getStats()).values() if s.type == "outbound-rtp"
        )
        encoder = getattr(sender, "_RTCRtpSender__encoder", None)
        target = getattr(encoder, "target_bitrate", 0) if encoder is not None else 0
        print(
            f"remb={rembs['last']} rembs={rembs['count']} target={target} "
            f"sent_bps={(total - sent) * 8}",
            flush=True,
        )
        sent = total
    await asyncio.get_running_loop().run_in_executor(None, http, "DELETE", location, token)
    print("left", flush=True)
    await pc.close()


async def watch(url: str, token: str, want: int, timeout: float, stall: float = 0.0):
    """Decode `want` frames; with `stall` > 0, then print `ready` and wait until no frame
    arrived for `stall` seconds (prints `stalled`; exit 0) or `timeout` passes (exit 4)."""
    pc = RTCPeerConnection()
    state_logger(pc)
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    done = asyncio.get_running_loop().create_future()
    decoded = 0
    audio = [0]
    last = [0.0]
    # When the WHEP POST was sent: the first decoded frame prints the time since.
    posted = [0.0]

    @pc.on("track")
    def on_track(track):
        async def pull_audio():
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                audio[0] += 1

        if track.kind == "audio":
            asyncio.ensure_future(pull_audio())
            return

        async def pull():
            nonlocal decoded
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                if frame.width > 0:
                    decoded += 1
                    last[0] = asyncio.get_running_loop().time()
                    if decoded == 1:
                        print(f"first_frame_ms={(last[0] - posted[0]) * 1000:.0f}", flush=True)
                    if decoded % 10 == 0:
                        print(f"frames={decoded} size={frame.width}x{frame.height}", flush=True)
                    if decoded >= want and not done.done():
                        done.set_result(True)

        asyncio.ensure_future(pull())

    posted[0] = asyncio.get_running_loop().time()
    location = await negotiate(pc, url, token)
    try:
        await asyncio.wait_for(done, timeout)
        ok = True
    except asyncio.TimeoutError:
        ok = False
    print(f"frames={decoded} audio_frames={audio[0]}", flush=True)
    if NACKS is not None:
        print(f"nacks_sent={NACKS['sent']}", flush=True)
    if ok and stall > 0:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        ok = False
        while loop.time() < end:
            await asyncio.sleep(0.1)
            if loop.time() - last[0] >= stall:
                print(f"stalled after frames={decoded}", flush=True)
                ok = True
                break
        if not ok:
            await pc.close()
            sys.exit(4)
    await asyncio.get_running_loop().run_in_executor(None, http, "DELETE", location, token)
    await pc.close()
    sys.exit(0 if ok else 2)


async def watch_many(urls: list, tokens: list, want: int, timeout: float):
    """One RTCPeerConnection per URL, all in this process (cheaper than one process each on
    a small machine); success when every one decoded `want` frames."""
    loop = asyncio.get_running_loop()
    pcs = []
    done = []
    decoded = [0] * len(urls)
    locations = [None] * len(urls)

    def token_of(i: int) -> str:
        return tokens[i] if len(tokens) == len(urls) else tokens[0]

    async def one(i: int, url: str):
        token = token_of(i)
        pc = RTCPeerConnection()
        pcs.append(pc)
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        fut = loop.create_future()
        done.append(fut)

        @pc.on("track")
        def on_track(track):
            async def pull():
                while True:
                    try:
                        frame = await track.recv()
                    except Exception:
                        return
                    if track.kind == "video" and frame.width > 0:
                        decoded[i] += 1
                        if decoded[i] == want:
                            print(f"viewer={i} decoded={want}", flush=True)
                            if not fut.done():
                                fut.set_result(True)

            asyncio.ensure_future(pull())

        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        status, headers, body = await loop.run_in_executor(
            None, http, "POST", url, token, pc.localDescription.sdp.encode()
        )
        if status != 201:
            print(f"viewer={i} refused status={status} body={body}", flush=True)
            fut.set_result(False)
            return
        location = headers.get("Location") or headers.get("location")
        locations[i] = urllib.parse.urljoin(url, location)
        print(f"viewer={i} joined location={locations[i]}", flush=True)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    for i, url in enumerate(urls):
        await one(i, url)
    try:
        await asyncio.wait_for(asyncio.gather(*done), timeout)
    except asyncio.TimeoutError:
        pass
    ok = sum(1 for d in decoded if d >= want)
    print(f"decoded_all={ok}/{len(urls)}", flush=True)
    for i, loc in enumerate(locations):
        if loc is not None:
            await loop.run_in_executor(None, http, "DELETE", loc, token_of(i))
    for pc in pcs:
        await pc.close()
    sys.exit(0 if ok == len(urls) else 2)


def vp8_keyframe(payload: bytes) -> bool:
    """True for the first packet of a VP8 key frame (RFC 7741 §4.2-4.3): start of a
    partition 0 with the P bit of the payload header clear."""
    if len(payload) < 2:
        return False
    b0 = payload[0]
    start, pid = b0 & 0x10, b0 & 0x07
    i = 1
    if b0 & 0x80:  # X: extension byte follows
        x = payload[1]
        i = 2
        if x & 0x80:  # I: picture id, 1 or 2 bytes
            i += 2 if len(payload) > i and payload[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX byte
            i += 1
    return bool(start) and pid == 0 and len(payload) > i and payload[i] & 0x01 == 0


async def publish_pli_only(url: str, token: str, seconds: float):
    """`publish`, answering PLI only, the way stacks without FIR support do."""
    handle = Sender._handle_rtcp_packet

    async def only_pli(self, packet):
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            kind = "pli" if packet.fmt == RTCP_PSFB_PLI else "fir"
            print(f"keyframe_request={kind}", flush=True)
            if kind == "fir":
                return  # not understood
        await handle(self, packet)

    Sender._handle_rtcp_packet = only_pli
    await publish(url, token, seconds)


async def watch_fir(url: str, token: str, requests: int, timeout: float):
    """Watch as a FIR-preferring stack; measure each FIR's keyframe latency."""
    for codec in aiortc_codecs.CODECS["video"]:
        if codec.mimeType != "video/rtx":
            codec.rtcpFeedback.append(RTCRtcpFeedback(type="ccm", parameter="fir"))
    state = {"seq": 0, "rtcp_ssrc": None, "media_ssrc": None, "waiting": None, "pt": None}
    lat = []
    keyframe_seen = asyncio.Event()

    async def send_fir(self, media_ssrc):
        state["media_ssrc"] = media_ssrc
        state["seq"] = (state["seq"] + 1) % 256
        fci = media_ssrc.to_bytes(4, "big") + bytes([state["seq"], 0, 0, 0])
        rtcp_ssrc = self._RTCRtpReceiver__rtcp_ssrc
        if rtcp_ssrc is not None:
            pkt = RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
            await self._send_rtcp(pkt)

    handle_rtp = RTCRtpReceiver._handle_rtp_packet

    async def watch_rtp(self, packet, arrival_time_ms):
        if state["pt"] is not None and packet.payload_type == state["pt"]:
            state["receiver"], state["media_ssrc"] = self, packet.ssrc
        if (
            state["pt"] is not None
            and packet.payload_type == state["pt"]
            and vp8_keyframe(packet.payload)
        ):
            t0 = state["waiting"]
            if t0 is not None:
                lat.append((asyncio.get_running_loop().time() - t0) * 1000)
                state["waiting"] = None
                print(f"keyframe_after_ms={lat[-1]:.0f}", flush=True)
                keyframe_seen.set()
        await handle_rtp(self, packet, arrival_time_ms)

    RTCRtpReceiver._send_rtcp_pli = send_fir
    RTCRtpReceiver._handle_rtp_packet = watch_rtp

    pc = RTCPeerConnection()
    state_logger(pc)
    pc.addTransceiver("video", direction="recvonly")
    decoded = [0]
    first = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track):
        async def pull():
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                if frame.width > 0:
                    decoded[0] += 1
                    if decoded[0] == 10 and not first.done():
                        first.set_result(True)

        asyncio.ensure_future(pull())

    location = await negotiate(pc, url, token)
    for line in pc.remoteDescription.sdp.splitlines():
        if line.startswith("a=rtpmap:") and " VP8/90000" in line:
            state["pt"] = int(line[len("a=rtpmap:"):].split()[0])
            break
    ok = True
    try:
        # The first keyframe comes from the FIR aiortc's decoder asks for on joining.
        await asyncio.wait_for(first, timeout)
        print(f"frames={decoded[0]}", flush=True)
        for _ in range(requests):
            await asyncio.sleep(1.5)  # past the relay's aggregation interval
            receiver = state.get("receiver")
            keyframe_seen.clear()
            state["waiting"] = asyncio.get_running_loop().time()
            await send_fir(receiver, state["media_ssrc"])
            await asyncio.wait_for(keyframe_seen.wait(), 5.0)
    except asyncio.TimeoutError:
        print(f"timeout frames={decoded[0]} keyframes={len(lat)}", flush=True)
        ok = False
    await asyncio.get_running_loop().run_in_executor(None, http, "DELETE", location, token)
    await pc.close()
    sys.exit(0 if ok else 2)


def count_nacks():
    """Count NACKed sequence numbers both ways (printed by publish/watch at the end)."""
    counts = {"received": 0, "sent": 0}
    handle = Sender._handle_rtcp_packet

    async def counting(self, packet):
        if getattr(packet, "lost", None) is not None and packet.__class__.__name__ == "RtcpRtpfbPacket":
            counts["received"] += len(packet.lost)
        await handle(self, packet)

    send_nack = RTCRtpReceiver._send_rtcp_nack

    async def counting_nack(self, media_ssrc, lost):
        counts["sent"] += len(lost)
        await send_nack(self, media_ssrc, lost)

    Sender._handle_rtcp_packet = counting
    RTCRtpReceiver._send_rtcp_nack = counting_nack
    return counts


NACKS = count_nacks() if os.environ.get("SLUICE_AIORTC_COUNT_NACKS") else None


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        print("aiortc ok")
        return
    if len(sys.argv) == 5 and sys.argv[1] == "publish":
        asyncio.run(publish(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    elif len(sys.argv) == 5 and sys.argv[1] == "publish-remb":
        asyncio.run(publish_remb(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    elif len(sys.argv) == 5 and sys.argv[1] == "publish-pli-only":
        asyncio.run(publish_pli_only(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    elif len(sys.argv) == 6 and sys.argv[1] == "watch-fir":
        asyncio.run(watch_fir(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    elif len(sys.argv) == 6 and sys.argv[1] == "watch-many":
        urls = [u for u in sys.argv[2].split(",") if u]
        tokens = [t for t in sys.argv[3].split(",") if t]
        asyncio.run(watch_many(urls, tokens, int(sys.argv[4]), float(sys.argv[5])))
    elif len(sys.argv) in (6, 7) and sys.argv[1] == "watch":
        stall = float(sys.argv[6]) if len(sys.argv) == 7 else 0.0
        asyncio.run(watch(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), stall))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(64)


if __name__ == "__main__":
    main()
