// Shared pieces of the JS mimir node and client (mimir-node.mjs, mimir-client.mjs).
// The libp2p stack and the framing are those of the original MimirLLM peers (see /work/shared/WIRE.md):
// TCP, Noise, yamux, identify (+ identify push), optional kad-dht; packets are UTF-8 JSON
// framed by it-length-prefixed's streaming encoder (varint and body go out as two chunks).
// On request (relay: true) the circuit relay v2 transport too, for peers behind NATs: `--reserve ADDR`
// on the nodes, circuit `--peer` addresses on the clients (see reserveOn, RELAYED_OPTIONS).
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify, identifyPush } from '@libp2p/identify'
import { kadDHT } from '@libp2p/kad-dht'
import { mdns as mdnsDiscovery } from '@libp2p/mdns'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import * as lp from 'it-length-prefixed'
import { createLibp2p } from 'libp2p'

export const CHAT_PROTOCOL = '/mimirllm/1.0.0'
export const IDENTIFY_PROTOCOL = '/mimirllm/1.0.0/identify'
export const DEFAULT_MODEL = 'llama3.2:latest'
// the models the original client knows, by CID
export const MODEL_CIDS = {
  QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C: 'llama3.2:latest'
}
export const DEFAULT_CID = 'QmNizEt5WLyEDUHMqsm89RHHNR63DYUSdtS38AeG4XUV6C'

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

// ---------------------------------------------------------------- output

let tag = 'mimir'
export function setLogTag (t) { tag = t }

export function log (...args) {
  process.stderr.write(`[${tag} ${process.pid}] ${args.map(a => (a instanceof Error ? (a.stack ?? String(a)) : typeof a === 'string' ? a : safeJson(a))).join(' ')}\n`)
}

function safeJson (v) {
  try { return JSON.stringify(v) } catch { return String(v) }
}

/** One JSON line on stdout; resolves once written. */
export function emit (obj) {
  return new Promise(resolve => {
    process.stdout.write(JSON.stringify(obj) + '\n', () => resolve())
  })
}

export function errorMessage (err) {
  if (err == null) return 'unknown error'
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

export function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// ---------------------------------------------------------------- packets

/** The bytes of one packet body (the JSON text), without its length prefix. */
export function packetBytes (packet) {
  return encoder.encode(JSON.stringify(packet))
}

/** Frame packets for stream.sink with the streaming lp.encode, as the original peers do. */
export function framed (packets) {
  if (Symbol.asyncIterator in packets) {
    return lp.encode((async function * () { for await (const p of packets) yield packetBytes(p) })())
  }
  return lp.encode(Array.from(packets, packetBytes))
}

/** Pass a stream's source through, pushing the byte length of each chunk (one per yamux data frame) to sizes. */
export async function * tapSizes (source, sizes) {
  for await (const chunk of source) {
    sizes.push(chunk.byteLength)
    yield chunk
  }
}

/** Decoded packets (parsed JSON) of a stream's source. */
export async function * packetsOf (source) {
  for await (const msg of lp.decode(source)) {
    const bytes = msg instanceof Uint8Array ? msg : msg.subarray()
    yield JSON.parse(decoder.decode(bytes))
  }
}

// ---------------------------------------------------------------- libp2p

export function takeFlag (argv, i, name) {
  if (i + 1 >= argv.length) throw new Error(`${name} needs a value`)
  return argv[i + 1]
}

// ---------------------------------------------------------------- relayed connections

/** Options of handle()/newStream() that let a protocol run on limited (relayed) connections. */
export const RELAYED_OPTIONS = Object.freeze({ runOnLimitedConnection: true })

const P2P_CIRCUIT = 290

/** True for an address through a relay (it has /p2p-circuit). */
export function isRelayed (ma) {
  return ma.protoCodes().includes(P2P_CIRCUIT)
}

/** A connection's fields for the connection:open / connection:close events. */
export function connectionFields (c) {
  return {
    peerId: c.remotePeer.toString(),
    remoteAddr: c.remoteAddr.toString(),
    relayed: isRelayed(c.remoteAddr),
    limited: c.limits != null
  }
}

/**
 * Reserve a slot on each relay of `relays` (multiaddrs ending in /p2p/<relay>): listen on
 * ADDR/p2p-circuit (needs a node built with relay: true). A reservation that fails within timeoutMs is
 * logged and reported as a {"event":"reserve-failed",addr,error} line; the others go on.
 * Returns the node's relayed addresses (<relay addr>/p2p-circuit/p2p/<its id>) afterwards.
 */
export async function reserveOn (node, relays, timeoutMs = 30_000) {
  for (const addr of relays) {
    try {
      await withTimeout(node.components.transportManager.listen([multiaddr(addr).encapsulate('/p2p-circuit')]),
        timeoutMs, `reservation on ${addr}`)
    } catch (err) {
      log(`reserve on ${addr} failed:`, err)
      await emit({ event: 'reserve-failed', addr, error: errorMessage(err) })
    }
  }
  return circuitAddrs(node)
}

/** The node's relayed addresses now. */
export function circuitAddrs (node) {
  return node.getMultiaddrs().filter(isRelayed).map(ma => ma.toString())
}

/**
 * libp2p as the original peers build it (plus test-friendly connection limits, as in peer.mjs).
 * mdns: add @libp2p/mdns discovery like the original's config (mdnsIntervalMs: its query interval,
 * default 10000); discovered peers come as 'peer:discovery' events. relay: add the circuit relay v2
 * transport (dial .../p2p-circuit/p2p/<peer> addresses, accept relayed connections, reserve with reserveOn).
 * maxConnections: the connection manager's cap (libp2p's default otherwise).
 */
export async function buildNode ({ listen, dht = false, monitor = true, monitorIntervalMs, mdns = false, mdnsIntervalMs, relay = false, maxConnections }) {
  const services = {
    identify: identify(),
    identifyPush: identifyPush()
  }
  if (dht) services.dht = kadDHT()
  if (mdns) services.mdns = mdnsDiscovery(mdnsIntervalMs != null ? { interval: mdnsIntervalMs } : {})
  return await createLibp2p({
    start: false,
    addresses: { listen },
    transports: transportsFor(relay),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: {
      inboundConnectionThreshold: 1_000_000,
      maxIncomingPendingConnections: 1024,
      ...(maxConnections != null ? { maxConnections } : {})
    },
    connectionMonitor: {
      enabled: monitor,
      ...(monitorIntervalMs != null ? { pingInterval: monitorIntervalMs } : {})
    },
    services
  })
}

/** TCP, plus the circuit relay v2 transport when `relay`. */
export function transportsFor (relay) {
  return relay ? [tcp(), circuitRelayTransport()] : [tcp()]
}

/** Report crashes instead of dying silently (a test can assert there were none). */
export function reportUncaught () {
  process.on('uncaughtException', (err) => {
    log('uncaughtException', err)
    void emit({ event: 'uncaught', kind: 'uncaughtException', error: errorMessage(err) })
  })
  process.on('unhandledRejection', (err) => {
    log('unhandledRejection', err)
    void emit({ event: 'uncaught', kind: 'unhandledRejection', error: errorMessage(err) })
  })
}

// A function that stops `node` (within 5 s) and exits with `code`, once however often it is called; it is
// also called on SIGTERM and SIGINT.
function stopOnSignals (node) {
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
  return shutdown
}

// Start `node`, run `afterStart` (its reservations: it returns further fields of the ready event), print
// its `ready` event (`fields` after its peer ID and addresses), then stop it (within 5 s) and exit once:
// on SIGTERM, SIGINT, an `exit` line on stdin or the end of stdin.
export async function serveUntilStopped (node, fields, afterStart = async () => ({})) {
  const shutdown = stopOnSignals(node)

  await node.start()
  const more = await afterStart()

  await emit({
    event: 'ready',
    peerId: node.peerId.toString(),
    addrs: node.getMultiaddrs().map(ma => ma.toString()),
    ...fields,
    ...more
  })

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  rl.on('line', (line) => { if (line.trim() === 'exit') void shutdown(0, 'exit command') })
  rl.on('close', () => { void shutdown(0, 'stdin EOF') })
}

// A scriptable peer's driver (kad-peer.mjs, nat-peer.mjs): `node` is started, `afterStart` runs (its
// bootstrap dials or reservations), the ready line is printed, then each JSON line on stdin runs
// `commands[cmd](req)` concurrently and is answered {id, ok: true, ...result} or {id, ok: false, error};
// `stop`/`exit`, SIGTERM, SIGINT and the end of stdin stop the node (within 5 s) and the process.
export async function runCommandLoop (node, commands, afterStart = async () => {}) {
  const shutdown = stopOnSignals(node)

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
      if (req.cmd === 'exit' || req.cmd === 'stop') void shutdown(0, `${req.cmd} command`)
    } catch (err) {
      log(`cmd ${req?.cmd} (id ${id}) failed:`, err)
      await emit({ id, ok: false, error: errorMessage(err), error_name: err?.name ?? null })
    }
  }

  process.on('uncaughtException', (err) => {
    log('uncaughtException', err)
    void emit({ event: 'uncaught', kind: 'uncaughtException', error: errorMessage(err) })
  })
  process.on('unhandledRejection', (err) => {
    log('unhandledRejection', err)
    void emit({ event: 'uncaught', kind: 'unhandledRejection', error: errorMessage(err) })
  })

  await node.start()
  await afterStart()
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
}
