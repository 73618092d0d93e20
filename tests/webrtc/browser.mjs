// A real browser's WebRTC stack against Sluice, for tests/chromium_e2e.rs.
//
//     node browser.mjs check
//         exit 0 when playwright-core is importable and the browser exists, 3 otherwise
//     node browser.mjs run BASE_URL PUB_TOKEN VIEW_TOKEN ROOM FRAMES TIMEOUT_SECS [FIELD_TRIALS]
//         page 1 publishes getUserMedia({video, audio}) (Chromium's fake devices) through
//         WHIP at BASE_URL/whip/ROOM; page 2 watches BASE_URL/whep/ROOM with recvonly
//         transceivers until its <video> decoded FRAMES frames or TIMEOUT_SECS passed
//     node browser.mjs layouts BASE_URL PUB_TOKEN VIEW_TOKEN ROOM FRAMES TIMEOUT_SECS LAYOUTS
//         as `run`, with one watcher page per comma-separated layout, each a `+`-joined
//         list of the kinds of its recvonly transceivers in m-line order (e.g.
//         `video+audio,audio+video,video,audio`); a watcher is done when its <video> (if
//         any) decoded FRAMES frames and its audio receiver (if any) decoded samples
//     BASE_URL may be https://; for a certificate without a CA, SLUICE_CHROMIUM_ARGS carries
//     --ignore-certificate-errors-spki-list=<base64 SHA-256 of its public key>
//     node browser.mjs session SPEC.json
//         one browser process per peer group, each its own executable (e.g. a wrapper that
//         runs Chromium inside a network namespace; tests/netns.rs), for tests/lossy_e2e.rs
//         and tests/ice_tcp_e2e.rs. SPEC:
//           { "mode": "relay" | "direct", "base": URL, "room": ROOM, "seconds": S,
//             "connectSecs": C, "args": [switches for every browser],
//             "publisher": { "chromium": EXE, "token": T },
//             "viewers": [ { "label": L, "chromium": EXE, "token": T, "pages": N,
//                            "tokens": [one per page, instead of T] } ] }
//         relay: the publisher's page publishes its fake camera and microphone through WHIP
//         at BASE/whip/ROOM, then each viewer group's N pages watch BASE/whep/ROOM; direct:
//         one viewer page and the publisher's page call each other, the driver passing offer
//         and answer (complete, no trickle) between the two browsers. Once every viewer
//         decoded a frame (or C seconds passed), getStats() of every page is taken (`start`),
//         then once a second for S seconds (publisher bytesSent, viewers framesDecoded), then
//         again (`end`). One line `RESULT {json}`; exit 0 when every viewer decoded frames.
//         Options: `publisher.simulcast: true` publishes a 1280x720 fake camera as three VP8
//         simulcast encodings (RIDs q, h, f at scaleResolutionDownBy 4, 2, 1; the offer's
//         a=simulcast line is in the result as `simulcastOffer`); a viewer group's
//         `layerPlan: [{ "at": SECOND, "max": 0..2 | null }]` PATCHes its pages' WHEP
//         resources with {"max_layer": max} at that second of the measurement. The series
//         then also has every viewer's frameWidth and the publisher's per-RID frameWidth.
//         `publisher.minBitrateKbps: N` starts and floors the publisher's uplink estimate at N
//         kbit/s (x-google-start-bitrate / x-google-min-bitrate added to the answer it
//         applies), for a publisher whose uplink carries every simulcast layer.
//         `publisher.svc: { "codec": "VP9" | "AV1", "scalabilityMode": "L3T3_KEY" }` publishes
//         a 1280x720 fake camera as one encoding in that SVC mode on that codec only (VP9
//         profile 0); an encoder without it fails the publisher with `SVC_UNSUPPORTED: ...`.
//         The result's `svc` says whether the offer and answer carry the Dependency
//         Descriptor extension and the mode the sender applied. A `layerPlan` step's
//         `temporal: 0..3 | null` also sends {"max_temporal": temporal}; a viewer group's
//         `dd: true` makes its pages offer the Dependency Descriptor extension. The series also has
//         every viewer's framesPerSecond and freezeCount, and the publisher's outbound frameWidth.
//         Host candidates are not hidden behind mDNS names (the peers are in other namespaces).
//         `startedFile: PATH`: written (the start time, ms since the epoch) when the per-second
//         measurement starts, so the caller can change the network at known seconds of it.
//         A viewer group's `base: URL` watches BASE/whep/ROOM of that appliance instead (a
//         cluster's edge node); its pages are served on that origin.
//
// `run` prints progress on stderr and one line `RESULT {json}` on stdout: frames decoded by
// the watcher's <video>, and getStats() of both peers (transport: DTLS state, version,
// cipher, SRTP cipher; inbound/outbound RTP counters). Exit 0 when FRAMES were decoded.
//
// The pages are served by Playwright itself (page.route) at BASE_URL/__chromium_e2e, so
// they are a secure context (http://127.0.0.1 is potentially trustworthy, getUserMedia is
// allowed) and same-origin with the WHIP/WHEP endpoints; no other request leaves the
// browser. The browser is /usr/bin/chromium (SLUICE_CHROMIUM overrides); Playwright
// downloads nothing.

import { mkdtempSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const executablePath = process.env.SLUICE_CHROMIUM || '/usr/bin/chromium';
const log = (...a) => console.error('[browser]', ...a);

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  log(`playwright-core not importable: ${e.message}`);
  process.exit(3);
}
const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'check') {
  process.exit(existsSync(executablePath) ? 0 : 3);
}
if (cmd !== 'session' && (!['run', 'layouts'].includes(cmd) || args.length < 6 ||
    (cmd === 'layouts' && args.length < 7))) {
  log('usage: browser.mjs check | run BASE_URL PUB_TOKEN VIEW_TOKEN ROOM FRAMES TIMEOUT_SECS [FIELD_TRIALS]' +
    ' | layouts BASE_URL PUB_TOKEN VIEW_TOKEN ROOM FRAMES TIMEOUT_SECS LAYOUTS');
  process.exit(2);
}
const [base, pubToken, viewToken, room, framesArg, timeoutArg, extra] = cmd === 'session' ? [] : args;
const fieldTrials = cmd === 'run' ? extra : undefined;
const layouts = cmd === 'layouts'
  ? extra.split(',').map((l) => l.split('+'))
  : [['audio', 'video']];
const want = Number(framesArg);
const timeoutMs = Number(timeoutArg) * 1000;

// In-page helpers (serialised into the page by page.evaluate).
const PAGE_LIB = `
window.waitGathering = (pc, ms) => new Promise((res) => {
  if (pc.iceGatheringState === 'complete') return res();
  const t = setTimeout(res, ms);
  pc.addEventListener('icegatheringstatechange', () => {
    if (pc.iceGatheringState === 'complete') { clearTimeout(t); res(); }
  });
});
window.negotiate = async (pc, url, token, editAnswer) => {
  await pc.setLocalDescription(await pc.createOffer());
  // No trickle ICE in Sluice: send the offer once gathering is done (or after 2 s; an
  // ICE-lite answerer learns our address from our checks anyway).
  await waitGathering(pc, 2000);
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/sdp' },
    body: pc.localDescription.sdp,
  });
  const body = await r.text();
  if (r.status !== 201) throw new Error('POST ' + url + ': ' + r.status + ' ' + body);
  await pc.setRemoteDescription({ type: 'answer', sdp: editAnswer ? editAnswer(body) : body });
  return { location: r.headers.get('Location'), answer: body };
};
// Video counters of one peer for the session command: inbound (a viewer's) and outbound (a
// publisher's) video stream, and the selected candidate pair with its protocols.
window.videoStats = async (pc) => {
  const stats = await pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  const out = { inbound: null, outbound: null, pair: null };
  const pick = (s, keys) => Object.fromEntries(keys.filter((k) => s[k] !== undefined).map((k) => [k, s[k]]));
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.inbound = pick(s, ['packetsReceived', 'packetsLost', 'nackCount', 'retransmittedPacketsReceived',
        'retransmittedBytesReceived', 'freezeCount', 'totalFreezesDuration', 'pauseCount', 'totalPausesDuration',
        'framesDecoded', 'framesDropped', 'framesReceived', 'keyFramesDecoded', 'framesPerSecond', 'pliCount',
        'firCount', 'jitter', 'bytesReceived', 'frameWidth', 'frameHeight']);
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      if (s.rid) (out.layers = out.layers || {})[s.rid] = pick(s, ['frameWidth', 'frameHeight', 'bytesSent', 'framesEncoded']);
      out.outbound = pick(s, ['packetsSent', 'bytesSent', 'retransmittedPacketsSent', 'retransmittedBytesSent',
        'nackCount', 'pliCount', 'firCount', 'framesEncoded', 'framesSent', 'keyFramesEncoded', 'framesPerSecond',
        'qualityLimitationReason', 'targetBitrate', 'frameWidth', 'frameHeight', 'scalabilityMode']);
    } else if (s.type === 'transport') {
      const p = byId.get(s.selectedCandidatePairId);
      if (p) {
        const l = byId.get(p.localCandidateId) || {};
        const r = byId.get(p.remoteCandidateId) || {};
        out.pair = {
          state: p.state, currentRoundTripTime: p.currentRoundTripTime,
          availableOutgoingBitrate: p.availableOutgoingBitrate,
          localProtocol: l.protocol, localType: l.candidateType, localTcpType: l.tcpType,
          localAddress: (l.address || l.ip) + ':' + l.port,
          remoteProtocol: r.protocol, remoteType: r.candidateType, remoteTcpType: r.tcpType,
          remoteAddress: (r.address || r.ip) + ':' + r.port,
        };
      }
    }
  });
  out.connectionState = pc.connectionState;
  return out;
};
// The viewer side of the session command: a <video> per video track, audio played.
window.attachMedia = (pc) => {
  window.videoFrames = 0;
  pc.addEventListener('track', (e) => {
    if (e.track.kind === 'audio') {
      const a = document.createElement('audio');
      a.autoplay = true;
      a.srcObject = new MediaStream([e.track]);
      document.body.appendChild(a);
      a.play().catch((err) => console.log('audio play: ' + err));
      return;
    }
    const v = document.getElementById('v');
    v.srcObject = new MediaStream([e.track]);
    v.play().catch((err) => console.log('play: ' + err));
  });
};
window.summarise = async (pc) => {
  const stats = await pc.getStats();
  const out = { transport: null, pair: null, inbound: [], outbound: [] };
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  stats.forEach((s) => {
    if (s.type === 'transport') {
      out.transport = {
        dtlsState: s.dtlsState, tlsVersion: s.tlsVersion, dtlsCipher: s.dtlsCipher,
        srtpCipher: s.srtpCipher, dtlsRole: s.dtlsRole, iceState: s.iceState,
        packetsSent: s.packetsSent, packetsReceived: s.packetsReceived,
      };
      const p = byId.get(s.selectedCandidatePairId);
      if (p) {
        const l = byId.get(p.localCandidateId) || {};
        const r = byId.get(p.remoteCandidateId) || {};
        out.pair = {
          state: p.state, nominated: p.nominated,
          local: (l.address || l.ip) + ':' + l.port + ' ' + l.candidateType,
          remote: (r.address || r.ip) + ':' + r.port + ' ' + r.candidateType,
        };
      }
    } else if (s.type === 'inbound-rtp') {
      const c = byId.get(s.codecId) || {};
      out.inbound.push({ kind: s.kind, mid: s.mid, codec: c.mimeType,
        packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
        framesDecoded: s.framesDecoded, bytesReceived: s.bytesReceived,
        totalSamplesReceived: s.totalSamplesReceived });
    } else if (s.type === 'outbound-rtp') {
      const c = byId.get(s.codecId) || {};
      out.outbound.push({ kind: s.kind, codec: c.mimeType, packetsSent: s.packetsSent,
        framesEncoded: s.framesEncoded });
    }
  });
  out.connectionState = pc.connectionState;
  return out;
};
`;

const PAGE_HTML = `<!doctype html><meta charset="utf-8"><title>sluice chromium e2e</title>
<video id="v" autoplay muted playsinline width="320" height="240"></video>
<script>${PAGE_LIB}</script>`;


if (cmd === 'session') process.exit(await session(args[0]));

// The session command (see the top of this file).
async function session(specPath) {
  const { readFileSync } = await import('node:fs');
  const spec = JSON.parse(readFileSync(specPath, 'utf8'));
  const direct = spec.mode === 'direct';
  // The page of a browser watching `base`: on that appliance's origin (same-origin WHIP/WHEP).
  const pageOf = (base) => `${direct ? 'http://127.0.0.1' : new URL(base).origin}/__chromium_e2e`;
  const contexts = [];
  const dirs = [];
  let status = 1;
  const launch = async (exe, tag, base = spec.base) => {
    const pageUrl = pageOf(base);
    const origin = new URL(pageUrl).origin;
    const dir = mkdtempSync(join(tmpdir(), 'sluice-chromium-'));
    dirs.push(dir);
    const a = [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      // Peers in other network namespaces must see each other's real host addresses.
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      // Background pages of one browser must not be throttled (several viewers per browser).
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
    ];
    const u = new URL(pageUrl);
    if (u.protocol === 'http:' && !['127.0.0.1', 'localhost'].includes(u.hostname)) {
      // A plain-HTTP appliance on a bridge address: treat it as a secure context
      // (getUserMedia needs one).
      a.push(`--unsafely-treat-insecure-origin-as-secure=${origin}`);
    }
    for (const x of spec.args || []) a.push(x);
    const ctx = await chromium.launchPersistentContext(dir, {
      executablePath: exe, headless: true, args: a, permissions: ['camera', 'microphone'],
    });
    contexts.push(ctx);
    await ctx.route(pageUrl, (r) => r.fulfill({ status: 200, contentType: 'text/html', body: PAGE_HTML }));
    ctx.pageUrl = pageUrl;
    log(`${tag}: chromium started (${exe})`);
    return ctx;
  };
  const open = async (ctx, tag) => {
    const p = await ctx.newPage();
    p.on('console', (m) => log(`${tag} console.${m.type()}: ${m.text()}`));
    p.on('pageerror', (e) => log(`${tag} page error: ${e.message}`));
    await p.goto(ctx.pageUrl);
    return p;
  };
  try {
    const pubCtx = await launch(spec.publisher.chromium, 'publisher');
    const pub = await open(pubCtx, 'publisher');
    const viewers = [];
    let simulcastOffer = null;
    for (const v of spec.viewers) {
      const ctx = await launch(v.chromium, v.label, v.base || spec.base);
      for (let i = 0; i < (v.pages || 1); i++) {
        viewers.push({ label: v.label, index: i, token: (v.tokens || [])[i] || v.token, base: v.base || spec.base,
          layerPlan: v.layerPlan || [], dd: !!v.dd, page: await open(ctx, `${v.label}#${i}`) });
      }
    }
    const connectMs = (spec.connectSecs || 30) * 1000;
    if (direct) {
      if (viewers.length !== 1) throw new Error('direct mode takes exactly one viewer page');
      const offer = await pub.evaluate(async () => {
        const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
        window.pc = pc;
        pc.addEventListener('connectionstatechange', () => console.log('connectionState=' + pc.connectionState));
        for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
        await pc.setLocalDescription(await pc.createOffer());
        await waitGathering(pc, 5000);
        return pc.localDescription.sdp;
      });
      const answer = await viewers[0].page.evaluate(async (sdp) => {
        const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
        window.pc = pc;
        pc.addEventListener('connectionstatechange', () => console.log('connectionState=' + pc.connectionState));
        attachMedia(pc);
        await pc.setRemoteDescription({ type: 'offer', sdp });
        await pc.setLocalDescription(await pc.createAnswer());
        await waitGathering(pc, 5000);
        return pc.localDescription.sdp;
      }, offer);
      await pub.evaluate(async (sdp) => window.pc.setRemoteDescription({ type: 'answer', sdp }), answer);
      log('direct call: offer and answer exchanged');
    } else {
      simulcastOffer = await pub.evaluate(async ({ url, token, simulcast, minKbps, svc }) => {
        const video = simulcast || svc ? { width: 1280, height: 720 } : true;
        const stream = await navigator.mediaDevices.getUserMedia({ video, audio: true });
        const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
        window.pc = pc;
        pc.addEventListener('connectionstatechange', () => console.log('connectionState=' + pc.connectionState));
        for (const t of stream.getTracks()) {
          const init = { direction: 'sendonly', streams: [stream] };
          if (simulcast && t.kind === 'video') {
            init.sendEncodings = [{ rid: 'q', scaleResolutionDownBy: 4 },
              { rid: 'h', scaleResolutionDownBy: 2 }, { rid: 'f', scaleResolutionDownBy: 1 }];
          }
          if (svc && t.kind === 'video') {
            // One encoding in an SVC mode, on the one codec asked for (VP9: profile 0 only).
            const caps = RTCRtpSender.getCapabilities('video').codecs.filter((c) =>
              c.mimeType === `video/${svc.codec}` && !/profile-id=[^0]/.test(c.sdpFmtpLine || ''));
            window.svcCaps = caps.map((c) => ({ fmtp: c.sdpFmtpLine || '', modes: c.scalabilityModes || null }));
            if (!caps.length) throw new Error(`SVC_UNSUPPORTED: no ${svc.codec} encoder`);
            if (caps.every((c) => c.scalabilityModes && !c.scalabilityModes.includes(svc.scalabilityMode))) {
              throw new Error(`SVC_UNSUPPORTED: ${svc.codec} without ${svc.scalabilityMode}`);
            }
            init.sendEncodings = [{ scalabilityMode: svc.scalabilityMode }];
          }
          const tr = pc.addTransceiver(t, init);
          if (simulcast && t.kind === 'video') {
            const vp8 = RTCRtpSender.getCapabilities('video').codecs.filter((c) => c.mimeType === 'video/VP8');
            tr.setCodecPreferences(vp8);
          }
          if (svc && t.kind === 'video') {
            tr.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs.filter((c) =>
              c.mimeType === `video/${svc.codec}` && !/profile-id=[^0]/.test(c.sdpFmtpLine || '')));
            window.svcSender = tr.sender;
          }
        }
        // Chromium's uplink estimate: with minKbps, start and floor it there (libwebrtc's
        // x-google-start/min-bitrate on the answer's VP8), as a publisher whose uplink
        // carries every layer.
        const floor = `x-google-start-bitrate=${minKbps};x-google-min-bitrate=${minKbps}`;
        const edit = minKbps && !svc ? (sdp) => sdp.replace(/a=rtpmap:(\d+) VP8\/90000\r\n/,
          (line, pt) => `${line}a=fmtp:${pt} ${floor}\r\n`) : minKbps ? (sdp) => {
          // The SVC codec's first payload type: the floor joins its fmtp line (or makes one).
          const m = sdp.match(new RegExp(`a=rtpmap:(\\d+) ${svc.codec}/90000\\r\\n`));
          if (!m) return sdp;
          const fmtp = new RegExp(`a=fmtp:${m[1]} ([^\\r\\n]*)\\r\\n`);
          return fmtp.test(sdp) ? sdp.replace(fmtp, (l, p) => `a=fmtp:${m[1]} ${p};${floor}\r\n`)
            : sdp.replace(m[0], `${m[0]}a=fmtp:${m[1]} ${floor}\r\n`);
        } : null;
        const neg = await negotiate(pc, url, token, edit);
        if (svc) {
          const dd = 'https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension';
          window.svcInfo = { caps: window.svcCaps, ddOffered: pc.localDescription.sdp.includes(dd),
            ddAnswered: neg.answer.includes(dd),
            applied: window.svcSender.getParameters().encodings.map((e) => e.scalabilityMode || null) };
        }
        return (pc.localDescription.sdp.match(/a=simulcast:[^\r\n]*/) || [null])[0];
      }, { url: `${spec.base}/whip/${spec.room}`, token: spec.publisher.token, simulcast: !!spec.publisher.simulcast,
        minKbps: spec.publisher.minBitrateKbps || 0, svc: spec.publisher.svc || null });
      await pub.waitForFunction(() => ['connected', 'failed'].includes(window.pc.connectionState), null,
        { timeout: connectMs });
      log('published');
      for (const v of viewers) {
        await v.page.evaluate(async ({ url, token, dd }) => {
          const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
          window.pc = pc;
          pc.addEventListener('connectionstatechange', () => console.log('connectionState=' + pc.connectionState));
          for (const k of ['audio', 'video']) {
            const tr = pc.addTransceiver(k, { direction: 'recvonly' });
            // Chromium offers the Dependency Descriptor only for an SVC sender by default: a
            // viewer asks for it through the header extension control API.
            if (dd && k === 'video') {
              tr.setHeaderExtensionsToNegotiate(tr.getHeaderExtensionsToNegotiate().map((h) =>
                /dependency-descriptor/.test(h.uri) ? { ...h, direction: 'recvonly' } : h));
            }
          }
          attachMedia(pc);
          window.resource = (await negotiate(pc, url, token)).location;
        }, { url: `${v.base}/whep/${spec.room}`, token: v.token, dd: v.dd });
      }
      log(`watching with ${viewers.length} page(s)`);
    }
    const decoded = async (p) => ((await p.evaluate(() => videoStats(window.pc))).inbound?.framesDecoded) || 0;
    const connectDeadline = Date.now() + connectMs;
    let ready = false;
    while (Date.now() < connectDeadline) {
      ready = true;
      for (const v of viewers) ready = ready && (await decoded(v.page)) > 0;
      if (ready) break;
      await pub.waitForTimeout(250);
    }
    log(ready ? 'every viewer decodes' : 'not every viewer decodes; measuring anyway');
    const snapshot = async () => ({
      publisher: await pub.evaluate(() => videoStats(window.pc)),
      viewers: await Promise.all(viewers.map(async (v) => ({
        label: v.label, index: v.index, stats: await v.page.evaluate(() => videoStats(window.pc)),
      }))),
    });
    const start = await snapshot();
    const t0 = Date.now();
    // The caller times changes of the network (a link shaped, then lifted) from this mark.
    if (spec.startedFile) writeFileSync(spec.startedFile, String(t0));
    const series = { t: [], publisherBytesSent: [], publisherLayers: [], viewerFramesDecoded: viewers.map(() => []),
      viewerFrameWidth: viewers.map(() => []), viewerFramesPerSecond: viewers.map(() => []),
      viewerFreezeCount: viewers.map(() => []),
      publisherFrameWidth: [], layerRequests: [] };
    for (let i = 1; i <= spec.seconds; i++) {
      const wait = t0 + i * 1000 - Date.now();
      if (wait > 0) await pub.waitForTimeout(wait);
      for (const v of viewers) {
        for (const step of v.layerPlan.filter((x) => x.at === i - 1)) {
          const body = { max_layer: step.max };
          if ('temporal' in step) body.max_temporal = step.temporal;
          const status = await v.page.evaluate(async ({ body }) => {
            const r = await fetch(window.resource, { method: 'PATCH',
              headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
            return r.status;
          }, { body });
          series.layerRequests.push({ label: v.label, index: v.index, at: i - 1, max: step.max,
            temporal: step.temporal, status });
          log(`${v.label}#${v.index}: max_layer ${step.max} -> ${status}`);
        }
      }
      series.t.push((Date.now() - t0) / 1000);
      const ps = await pub.evaluate(() => videoStats(window.pc));
      series.publisherBytesSent.push(ps.outbound?.bytesSent ?? 0);
      series.publisherLayers.push(ps.layers || null);
      series.publisherFrameWidth.push(ps.outbound?.frameWidth || 0);
      for (let j = 0; j < viewers.length; j++) {
        const vs = await viewers[j].page.evaluate(() => videoStats(window.pc));
        series.viewerFramesDecoded[j].push(vs.inbound?.framesDecoded || 0);
        series.viewerFrameWidth[j].push(vs.inbound?.frameWidth || 0);
        series.viewerFramesPerSecond[j].push(vs.inbound?.framesPerSecond || 0);
        series.viewerFreezeCount[j].push(vs.inbound?.freezeCount || 0);
      }
    }
    const end = await snapshot();
    const svcInfo = spec.publisher.svc ? await pub.evaluate(() => window.svcInfo || null) : undefined;
    const result = { mode: spec.mode, ready, seconds: (Date.now() - t0) / 1000, start, end, series, simulcastOffer,
      svc: svcInfo };
    console.log('RESULT ' + JSON.stringify(result));
    status = end.viewers.every((v, j) => (v.stats.inbound?.framesDecoded || 0) >
      (start.viewers[j].stats.inbound?.framesDecoded || 0)) ? 0 : 1;
  } catch (e) {
    log(`error: ${e.stack || e}`);
    // The encoder lacks the SVC mode asked for: a result saying so, for a visible skip.
    const unsupported = String(e.message || e).match(/SVC_UNSUPPORTED: [^\n]*/);
    if (unsupported) console.log('RESULT ' + JSON.stringify({ unsupported: unsupported[0] }));
    status = 1;
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
  return status;
}

const userDataDir = mkdtempSync(join(tmpdir(), 'sluice-chromium-'));
let context;
let status = 1;
try {
  const launchArgs = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
  ];
  if (fieldTrials) launchArgs.push(`--force-fieldtrials=${fieldTrials}`);
  // Extra switches, space-separated (e.g. --unsafely-treat-insecure-origin-as-secure=URL
  // for a plain-HTTP appliance on another host).
  for (const a of (process.env.SLUICE_CHROMIUM_ARGS || '').split(' ')) if (a) launchArgs.push(a);
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: launchArgs,
    permissions: ['camera', 'microphone'],
  });
  log(`chromium ${context.browser()?.version() ?? '(persistent context)'} started`);
  const origin = new URL(base).origin;
  const pageUrl = `${origin}/__chromium_e2e`;
  await context.route(pageUrl, (r) =>
    r.fulfill({ status: 200, contentType: 'text/html', body: PAGE_HTML }));
  const open = async (tag) => {
    const p = await context.newPage();
    p.on('console', (m) => log(`${tag} console.${m.type()}: ${m.text()}`));
    p.on('pageerror', (e) => log(`${tag} page error: ${e.message}`));
    await p.goto(pageUrl);
    return p;
  };

  const pub = await open('whip');
  const version = await pub.evaluate(() => navigator.userAgent);
  log(`user agent: ${version}`);
  const pubInfo = await pub.evaluate(async ({ url, token }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    window.pc = pc;
    pc.addEventListener('connectionstatechange', () =>
      console.log('connectionState=' + pc.connectionState));
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
    const { location } = await negotiate(pc, url, token);
    return { location, tracks: stream.getTracks().map((t) => t.kind) };
  }, { url: `${base}/whip/${room}`, token: pubToken });
  log(`published ${pubInfo.tracks.join('+')}, resource ${pubInfo.location}`);
  // The publisher's ICE and DTLS first: then the viewer's routes start from live media.
  await pub.waitForFunction(() => window.pc.connectionState === 'connected' ||
    window.pc.connectionState === 'failed', null, { timeout: timeoutMs });

  const watch = async (kinds) => {
    const view = await open('whep ' + kinds.join('+'));
    await view.evaluate(async ({ url, token, kinds }) => {
      const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      window.pc = pc;
      window.videoFrames = 0;
      pc.addEventListener('connectionstatechange', () =>
        console.log('connectionState=' + pc.connectionState));
      for (const k of kinds) pc.addTransceiver(k, { direction: 'recvonly' });
      const v = document.getElementById('v');
      pc.addEventListener('track', (e) => {
        if (e.track.kind === 'audio') {
          // Chromium decodes remote audio only for a sink that plays it.
          const a = document.createElement('audio');
          a.autoplay = true;
          a.srcObject = new MediaStream([e.track]);
          document.body.appendChild(a);
          a.play().catch((err) => console.log('audio play: ' + err));
          return;
        }
        if (e.track.kind !== 'video') return;
        v.srcObject = new MediaStream([e.track]);
        const count = () => { window.videoFrames += 1; v.requestVideoFrameCallback(count); };
        v.requestVideoFrameCallback(count);
        v.play().catch((err) => console.log('play: ' + err));
      });
      await negotiate(pc, url, token);
    }, { url: `${base}/whep/${room}`, token: viewToken, kinds });
    return { view, kinds };
  };
  const watchers = [];
  for (const kinds of layouts) watchers.push(await watch(kinds));
  log(`watching with ${watchers.length} page(s)`);

  // Frames the <video> element presented: requestVideoFrameCallback count, or the
  // playback-quality counter when that is larger (headless may skip callbacks).
  const frames = (view) => view.evaluate(() => {
    const q = document.getElementById('v').getVideoPlaybackQuality();
    return Math.max(window.videoFrames, q.totalVideoFrames - q.droppedVideoFrames);
  });
  // Audio samples the audio receiver decoded (0 without an audio receiver).
  const samples = (view) => view.evaluate(async () => {
    let n = 0;
    (await window.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') n += s.totalSamplesReceived || 0;
    });
    return n;
  });
  const done = async (w) => {
    w.frames = w.kinds.includes('video') ? await frames(w.view) : 0;
    w.samples = w.kinds.includes('audio') ? await samples(w.view) : 0;
    return (!w.kinds.includes('video') || w.frames >= want) &&
      (!w.kinds.includes('audio') || w.samples > 0);
  };
  const deadline = Date.now() + timeoutMs;
  let all = false;
  let last = '';
  while (Date.now() < deadline) {
    all = true;
    for (const w of watchers) all = (await done(w)) && all;
    const now = watchers.map((w) => `${w.kinds.join('+')}: ${w.frames}f/${w.samples}s`).join(', ');
    if (now !== last) log(now);
    last = now;
    if (all) break;
    await watchers[0].view.waitForTimeout(200);
  }
  const n = watchers[0].frames;
  const result = {
    frames: n,
    userAgent: version,
    // The protocol the WHIP POST travelled on (h2 over HTTPS, http/1.1 otherwise).
    whipProtocol: await pub.evaluate(() => performance.getEntriesByType('resource')
      .filter((e) => e.name.includes('/whip/')).map((e) => e.nextHopProtocol)[0] ?? null),
    publisher: await pub.evaluate(() => summarise(window.pc)),
    watcher: await watchers[0].view.evaluate(() => summarise(window.pc)),
    watchers: [],
  };
  for (const w of watchers) {
    result.watchers.push({
      layout: w.kinds.join('+'), frames: w.frames, samples: w.samples,
      stats: await w.view.evaluate(() => summarise(window.pc)),
    });
  }
  console.log('RESULT ' + JSON.stringify(result));
  status = all ? 0 : 1;
  // Leave politely: DELETE the WHIP resource.
  await pub.evaluate(async ({ origin, loc, token }) => {
    await fetch(origin + loc, { method: 'DELETE', headers: { 'Authorization': 'Bearer ' + token } });
  }, { origin, loc: pubInfo.location, token: pubToken }).catch((e) => log(`delete: ${e.message}`));
} catch (e) {
  log(`error: ${e.stack || e}`);
  status = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(status);
