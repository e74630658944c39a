#!/usr/bin/env node
// A controllable js-libp2p peer built from the original MimirLLM stack (see /work/shared/WIRE.md).
//
// stdout: JSON lines only (one "ready" event, then command answers and events).
// stderr: diagnostics.
// stdin:  JSON line commands, run concurrently: {"id": 1, "cmd": "dial", "addr": "/ip4/..."}
//
// Flags:
//   --listen <multiaddr>         repeatable; default /ip4/127.0.0.1/tcp/0
//   --no-identify                no identify / identify-push service
//   --dht                        add the kad-dht service (/ipfs/kad/1.0.0) like the original
//   --monitor-interval-ms <n>    connection monitor ping interval (libp2p default 10000)
//   --no-monitor                 disable libp2p's connection monitor
//   --mdns                       add @libp2p/mdns discovery; emits {"event": "peer:discovery", peerId, addrs}
//   --mdns-interval-ms <n>       mDNS query interval (@libp2p/mdns default 10000)
//   --peer-events                emit a "peer:identify" event whenever identify or an identify push
//                                from a peer was consumed (what the peer store learned)
import { createHash, randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, identifyPush } from '@libp2p/identify'
import { kadDHT } from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const ECHO_PROTOCOL = '/echo/1.0.0'
const STREAM_LIMITS = { maxInboundStreams: 1024, maxOutboundStreams: 1024 }
const DEFAULT_TIMEOUT_MS = 60_000

// ---------------------------------------------------------------- output

function log (...args) {
  process.stderr.write(`[peer ${process.pid}] ${args.map(a => (a instanceof Error ? (a.stack ?? String(a)) : typeof a === 'string' ? a : safeJson(a))).join(' ')}\n`)
}

function safeJson (v) {
  try { return JSON.stringify(v) } catch { return String(v) }
}

function emit (obj) {
  return new Promise(resolve => {
    process.stdout.write(JSON.stringify(obj) + '\n', () => resolve())
  })
}

function errorMessage (err) {
  if (err == null) return 'unknown error'
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

// ---------------------------------------------------------------- args

function parseArgs (argv) {
  const opts = { listen: [], identify: true, dht: false, monitor: true, monitorIntervalMs: undefined, peerEvents: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--listen') opts.listen.push(next())
    else if (a.startsWith('--listen=')) opts.listen.push(a.slice('--listen='.length))
    else if (a === '--no-identify') opts.identify = false
    else if (a === '--identify') opts.identify = true
    else if (a === '--dht') opts.dht = true
    else if (a === '--no-monitor') opts.monitor = false
    else if (a === '--peer-events') opts.peerEvents = true
    else if (a === '--monitor-interval-ms') opts.monitorIntervalMs = Number(next())
    else if (a === '--mdns') opts.mdns = true
    else if (a === '--mdns-interval-ms') opts.mdnsIntervalMs = Number(next())
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  return opts
}

// ---------------------------------------------------------------- yamux muxer tracking
// libp2p 2.x does not expose a connection's muxer. The upgrader calls
// muxerFactory.createStreamMuxer() and then, synchronously (no await in between),
// creates the Connection and dispatches 'connection:open'. So the muxer created last
// belongs to the connection announced next: hand it over in the 'connection:open' listener.

const muxerByConnection = new WeakMap()
const liveMuxers = new Set()
let pendingMuxer = null

function trackedYamux (init = {}) {
  const makeFactory = yamux(init)
  return (components) => {
    const factory = makeFactory(components)
    const create = factory.createStreamMuxer.bind(factory)
    factory.createStreamMuxer = (muxerInit) => {
      const muxer = create(muxerInit)
      pendingMuxer = muxer
      liveMuxers.add(muxer)
      return muxer
    }
    return factory
  }
}

function muxerOf (connection) {
  const m = muxerByConnection.get(connection)
  if (m != null) return m
  // fallback: a connection's streams are its muxer's stream objects
  const streams = connection.streams
  if (streams.length > 0) {
    for (const muxer of liveMuxers) {
      if (muxer.streams.includes(streams[0])) return muxer
    }
  }
  return undefined
}

// ---------------------------------------------------------------- helpers

function toBytes (chunk) {
  return chunk instanceof Uint8Array ? chunk : chunk.subarray()
}

function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function needAddr (req) {
  if (typeof req.addr !== 'string') throw new Error('missing "addr"')
  return multiaddr(req.addr)
}

function timeoutOf (req) {
  return typeof req.timeout_ms === 'number' ? req.timeout_ms : DEFAULT_TIMEOUT_MS
}

async function * randomChunks (size, chunk, onChunk) {
  let left = size
  while (left > 0) {
    const n = Math.min(chunk, left)
    const buf = randomBytes(n)
    onChunk(buf)
    left -= n
    yield buf
  }
}

/** Send `size` random bytes on an echo stream, close write, read everything back. */
async function echoOnStream (stream, size, chunk) {
  const hSent = createHash('sha256')
  const hRecv = createHash('sha256')
  let received = 0
  const write = stream.sink(randomChunks(size, chunk, b => hSent.update(b)))
  const read = (async () => {
    for await (const c of stream.source) {
      const b = toBytes(c)
      received += b.length
      hRecv.update(b)
    }
  })()
  try {
    await Promise.all([write, read])
  } catch (err) {
    stream.abort(err)
    throw err
  }
  await stream.close().catch(() => {})
  return { sent: size, received, sha256_sent: hSent.digest('hex'), sha256_received: hRecv.digest('hex') }
}

function describeConnection (c) {
  return {
    peerId: c.remotePeer.toString(),
    remoteAddr: c.remoteAddr.toString(),
    status: c.status,
    direction: c.direction,
    multiplexer: c.multiplexer ?? null,
    encryption: c.encryption ?? null,
    streams: c.streams.map(s => s.protocol ?? null),
    // set by libp2p's connection monitor after each heartbeat; null before the first one
    rtt: c.rtt ?? null
  }
}

// ---------------------------------------------------------------- main

const opts = parseArgs(process.argv.slice(2))

const services = { ping: ping() }
if (opts.identify) {
  // identify runs on every new connection, like the original; we trigger it ourselves
  // (runOnConnectionOpen: false) so that failures become observable events.
  services.identify = identify({ runOnConnectionOpen: false })
  services.identifyPush = identifyPush()
}
if (opts.dht) services.dht = kadDHT()
if (opts.mdns) services.mdns = mdns(opts.mdnsIntervalMs != null ? { interval: opts.mdnsIntervalMs } : {})

const node = await createLibp2p({
  start: false,
  addresses: { listen: opts.listen },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [trackedYamux()],
  connectionManager: {
    inboundConnectionThreshold: 1_000_000,
    maxIncomingPendingConnections: 1024
  },
  connectionMonitor: {
    enabled: opts.monitor,
    ...(opts.monitorIntervalMs != null ? { pingInterval: opts.monitorIntervalMs } : {})
  },
  services
})

if (opts.mdns) {
  // dispatched for peers new to the peer store (here: found by mDNS)
  node.addEventListener('peer:discovery', (evt) => {
    void emit({ event: 'peer:discovery', peerId: evt.detail.id.toString(), addrs: evt.detail.multiaddrs.map(ma => ma.toString()) })
  })
}

node.addEventListener('connection:open', (evt) => {
  const conn = evt.detail
  // must stay synchronous up to here: see trackedYamux
  if (pendingMuxer != null) {
    muxerByConnection.set(conn, pendingMuxer)
    pendingMuxer = null
  }
  void emit({ event: 'connection:open', peerId: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString(), direction: conn.direction })
  if (opts.identify) {
    node.services.identify.identify(conn).then(
      (result) => emit({
        event: 'identify',
        peerId: conn.remotePeer.toString(),
        ok: true,
        agentVersion: result.agentVersion ?? null,
        protocolVersion: result.protocolVersion ?? null,
        protocols: result.protocols ?? []
      }),
      (err) => {
        log('identify failed', errorMessage(err))
        return emit({
          event: 'identify',
          peerId: conn.remotePeer.toString(),
          ok: false,
          error: errorMessage(err),
          error_name: err?.name ?? null
        })
      }
    ).catch(err => log('identify event', err))
  }
})

if (opts.peerEvents) {
  node.addEventListener('peer:identify', (evt) => {
    const r = evt.detail
    void emit({
      event: 'peer:identify',
      peerId: r.peerId.toString(),
      agentVersion: r.agentVersion ?? null,
      protocolVersion: r.protocolVersion ?? null,
      protocols: r.protocols ?? [],
      listenAddrs: (r.listenAddrs ?? []).map(ma => ma.toString()),
      observedAddr: r.observedAddr?.toString() ?? null
    })
  })
}

node.addEventListener('connection:close', (evt) => {
  const conn = evt.detail
  const muxer = muxerByConnection.get(conn)
  if (muxer != null) liveMuxers.delete(muxer)
  void emit({ event: 'connection:close', peerId: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString() })
})

await node.handle(ECHO_PROTOCOL, ({ stream }) => {
  // true half-close: when the remote closes its write side the source ends, the sink
  // writes whatever is left and then closes our write side.
  stream.sink(stream.source).catch(err => {
    log('echo handler', errorMessage(err))
    stream.abort(err)
  })
}, STREAM_LIMITS)

const commands = {
  async dial (req) {
    const conn = await node.dial(needAddr(req), { signal: AbortSignal.timeout(timeoutOf(req)) })
    return { peerId: conn.remotePeer.toString(), remoteAddr: conn.remoteAddr.toString() }
  },

  async echo (req) {
    const size = req.size ?? 1024
    const chunk = req.chunk ?? 65536
    if (!Number.isInteger(size) || size < 0) throw new Error('"size" must be a non-negative integer')
    if (!Number.isInteger(chunk) || chunk <= 0) throw new Error('"chunk" must be a positive integer')
    const ma = needAddr(req)
    const conn = await node.dial(ma, { signal: AbortSignal.timeout(timeoutOf(req)) })
    const stream = await conn.newStream(ECHO_PROTOCOL, { ...STREAM_LIMITS, signal: AbortSignal.timeout(timeoutOf(req)) })
    return await echoOnStream(stream, size, chunk)
  },

  async concurrent (req) {
    const n = req.streams ?? 100
    const size = req.size ?? 4096
    const chunk = req.chunk ?? 65536
    const conn = await node.dial(needAddr(req), { signal: AbortSignal.timeout(timeoutOf(req)) })
    const results = await Promise.allSettled(Array.from({ length: n }, async () => {
      const stream = await conn.newStream(ECHO_PROTOCOL, { ...STREAM_LIMITS, signal: AbortSignal.timeout(timeoutOf(req)) })
      const r = await echoOnStream(stream, size, chunk)
      if (r.received !== r.sent || r.sha256_received !== r.sha256_sent) {
        throw new Error(`echo mismatch: sent ${r.sent} received ${r.received}`)
      }
      return r
    }))
    const failed = results.filter(r => r.status === 'rejected').map(r => errorMessage(r.reason))
    return { ok_streams: n - failed.length, failed, remotePeer: conn.remotePeer.toString() }
  },

  async halfclose (req) {
    const conn = await node.dial(needAddr(req), { signal: AbortSignal.timeout(timeoutOf(req)) })
    const stream = await conn.newStream(ECHO_PROTOCOL, { ...STREAM_LIMITS, signal: AbortSignal.timeout(timeoutOf(req)) })
    const text = req.text ?? 'hello'
    // the sink closes our write side once its source is done
    await stream.sink([new TextEncoder().encode(text)])
    const writeStatusAfterClose = stream.writeStatus
    const parts = []
    for await (const c of stream.source) parts.push(toBytes(c))
    const received = Buffer.concat(parts).toString('utf8')
    const result = {
      received,
      readStatus: stream.readStatus,
      writeStatus: stream.writeStatus,
      writeStatusAfterClose,
      status: stream.status,
      read_ended: stream.readStatus === 'closed'
    }
    await stream.close().catch(() => {})
    return result
  },

  async ping (req) {
    const rtt = await node.services.ping.ping(needAddr(req), { signal: AbortSignal.timeout(timeoutOf(req)) })
    return { rtt_ms: rtt }
  },

  async yamux_ping (req) {
    // reuses the existing connection if there is one
    const conn = await node.dial(needAddr(req), { signal: AbortSignal.timeout(timeoutOf(req)) })
    const muxer = muxerOf(conn)
    if (muxer == null) throw new Error('no yamux muxer known for this connection')
    if (typeof muxer.ping !== 'function') throw new Error('muxer has no ping()')
    const t0 = performance.now()
    const muxerRtt = await withTimeout(muxer.ping(), timeoutOf(req), 'yamux ping')
    const rtt = performance.now() - t0
    return { rtt_ms: rtt, muxer_rtt_ms: muxerRtt, remotePeer: conn.remotePeer.toString() }
  },

  async peerinfo (req) {
    // what the peer store knows about a peer (learned from identify and identify push)
    if (typeof req.peerId !== 'string') throw new Error('missing "peerId"')
    const peer = (await node.peerStore.all()).find(p => p.id.toString() === req.peerId)
    if (peer == null) throw new Error(`peer ${req.peerId} is not in the peer store`)
    const text = (key) => {
      const v = peer.metadata.get(key)
      return v == null ? null : new TextDecoder().decode(v)
    }
    return {
      peerId: req.peerId,
      addresses: peer.addresses.map(a => a.multiaddr.toString()),
      protocols: peer.protocols,
      agentVersion: text('AgentVersion'),
      protocolVersion: text('ProtocolVersion')
    }
  },

  async handle (req) {
    // serve one more echo protocol; identify push then announces it to connected peers
    if (typeof req.protocol !== 'string') throw new Error('missing "protocol"')
    await node.handle(req.protocol, ({ stream }) => {
      stream.sink(stream.source).catch(err => stream.abort(err))
    }, STREAM_LIMITS)
    return {}
  },

  async connections () {
    return { connections: node.getConnections().map(describeConnection) }
  },

  async hangup (req) {
    await node.hangUp(needAddr(req), { signal: AbortSignal.timeout(timeoutOf(req)) })
    return {}
  },

  async exit () {
    return {} // runCommand shuts down once this answer is written
  }
}

async function runCommand (line) {
  let req
  try {
    req = JSON.parse(line)
  } catch (err) {
    await emit({ id: null, ok: false, error: `bad JSON: ${errorMessage(err)}` })
    return
  }
  const id = req?.id ?? null
  try {
    const fn = Object.hasOwn(commands, req?.cmd) ? commands[req.cmd] : undefined
    if (fn == null) throw new Error(`unknown cmd ${JSON.stringify(req?.cmd)}`)
    const result = await fn(req)
    await emit({ id, ok: true, ...result })
    if (req.cmd === 'exit') void shutdown(0, 'exit command')
  } catch (err) {
    log(`cmd ${req?.cmd} (id ${id}) failed:`, err)
    await emit({ id, ok: false, error: errorMessage(err), error_name: err?.name ?? null })
  }
}

let stopping = null
function shutdown (code, why) {
  if (stopping != null) return stopping
  log(`stopping (${why})`)
  stopping = (async () => {
    try {
      await withTimeout(node.stop(), 5000, 'libp2p stop')
    } catch (err) {
      log('stop failed', err)
    }
    process.exit(code)
  })()
  return stopping
}

process.on('SIGTERM', () => { void shutdown(0, 'SIGTERM') })
process.on('SIGINT', () => { void shutdown(0, 'SIGINT') })
// Keep running, but make it visible: a test can assert no such events happened
// (WIRE.md pitfall: Node 22 APIs killing a listener on Node 20).
process.on('uncaughtException', (err) => {
  log('uncaughtException', err)
  void emit({ event: 'uncaught', kind: 'uncaughtException', error: errorMessage(err) })
})
process.on('unhandledRejection', (err) => {
  log('unhandledRejection', err)
  void emit({ event: 'uncaught', kind: 'unhandledRejection', error: errorMessage(err) })
})

await node.start()

await emit({
  event: 'ready',
  peerId: node.peerId.toString(),
  addrs: node.getMultiaddrs().map(ma => ma.toString())
})

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  if (line.trim() === '') return
  void runCommand(line)
})
rl.on('close', () => { void shutdown(0, 'stdin EOF') })
