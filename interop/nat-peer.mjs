#!/usr/bin/env node
// A scriptable js-libp2p 2.5 peer for mimirlite's NAT traversal tests (issue 15): circuit relay v2
// (@libp2p/circuit-relay-v2 3.1.7, server and client), DCUtR (@libp2p/dcutr 2.0.15), AutoNAT v1
// (@libp2p/autonat 2.0.16). Stack: TCP, Noise, yamux, identify (+ push), ping; driven by interop/jsnat.py.
//
// stdout: JSON lines only: {"event":"ready","peerId":..,"addrs":[..]}, then answers {"id":..,"ok":..}.
// stderr: diagnostics.
// stdin:  JSON line commands, run concurrently: {"id": 1, "cmd": "dial", "addr": "/ip4/..."}
//
// Flags:
//   --listen ADDR           repeatable; default /ip4/127.0.0.1/tcp/0
//   --key-seed N            Ed25519 identity from the 32-byte seed: 28 zero bytes and N as uint32 big-endian
//   --relay-server          serve the hop protocol (circuitRelayServer)
//   --max-reservations N    its reservations.maxReservations (default 15)
//   --data-limit BYTES      its reservations.defaultDataLimit (default 131072; both directions together)
//   --duration-limit S      its reservations.defaultDurationLimit, given in seconds (default 120); the
//                           relay keeps it in milliseconds and writes those milliseconds in Limit.duration
//   --no-limit              its reservations.applyDefaultLimit = false: relayed connections unlimited
//   --relay-client          the circuit relay transport (dial /p2p-circuit addresses, serve the stop protocol)
//   --reserve ADDR          repeatable (implies --relay-client): listen on ADDR/p2p-circuit, i.e. reserve a
//                           slot on that relay (ADDR must end in /p2p/<relay>)
//   --dcutr                 the DCUtR service (implies identify, already there)
//   --autonat               the AutoNAT v1 service
//   --lab-public CIDR       repeatable: the NAT lab's stand-in for the public internet. js-libp2p's DCUtR,
//                           AutoNAT, identify and address manager skip private addresses
//                           (@libp2p/utils/private-ip), and the lab has only private ones (10.x wan,
//                           192.168.x LANs in network namespaces): with this flag the whole peer takes the
//                           IPv4 addresses in CIDR for public (its own ones then need AutoNAT to verify them
//                           before it announces them, as on the internet: until then they are missing from
//                           the ready line's and addrs' lists). Needs the resolve hook loaded
//                           first: node --import ./lab-public-hook.mjs nat-peer.mjs --lab-public CIDR
//                           (jsnat.py does it through NODE_OPTIONS); see lab-public-hook.mjs.
//
// Every peer serves /mimirlite-test/echo/1.0.0 (also on limited, i.e. relayed, connections): it echoes
// the bytes it reads until EOF, then closes.
//
// Commands (answers add "ok": true, or "ok": false and "error"):
//   dial {addr, timeoutMs?}           -> {peerId, relayed, limited} (any multiaddr, circuit ones too)
//   connections                       -> {connections: [{peer, addr, relayed, limited, direction, status}]}
//   addrs                             -> {addrs: [..]} (its multiaddrs; circuit ones once reserved)
//   reserve {addr, timeoutMs?}        -> {addrs} listen on addr/p2p-circuit now (needs --relay-client)
//   echo {addr | peerId, hex, timeoutMs?} -> {hex} (opens the echo protocol, writes, closes, reads to EOF)
//   hangUp {peerId}                   -> {}
//   reservations                      -> {reservations: [peer id, ...]} (a relay server's)
//   addressMetadata                   -> {addrs: [{addr, type, verified}]} (the address manager's view:
//                                        AutoNAT marks an address verified once a server dialed it back)
//   labPublic {ips?}                  -> {cidrs, private: {ip: bool}} (the --lab-public CIDRs in effect,
//                                        and what isPrivateIp, the one js-libp2p uses, says of each ip)
//   stop / exit                       -> {} then the process stops
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { autoNAT } from '@libp2p/autonat'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { dcutr } from '@libp2p/dcutr'
import { identify, identifyPush } from '@libp2p/identify'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { isPrivateIp } from '@libp2p/utils/private-ip'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { emit, errorMessage, log, runCommandLoop, setLogTag, withTimeout } from './mimir-common.mjs'

setLogTag('nat')
const DEFAULT_TIMEOUT_MS = 30_000
const ECHO_PROTOCOL = '/mimirlite-test/echo/1.0.0'

function parseArgs (argv) {
  const opts = {
    listen: [],
    keySeed: undefined,
    relayServer: false,
    maxReservations: undefined,
    dataLimit: undefined,
    durationLimit: undefined,
    noLimit: false,
    relayClient: false,
    reserve: [],
    dcutr: false,
    autonat: false,
    labPublic: []
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--listen') opts.listen.push(next())
    else if (a === '--key-seed') opts.keySeed = Number(next())
    else if (a === '--relay-server') opts.relayServer = true
    else if (a === '--max-reservations') opts.maxReservations = Number(next())
    else if (a === '--data-limit') opts.dataLimit = BigInt(next())
    else if (a === '--duration-limit') opts.durationLimit = Number(next())
    else if (a === '--no-limit') opts.noLimit = true
    else if (a === '--relay-client') opts.relayClient = true
    else if (a === '--reserve') {
      opts.reserve.push(next())
      opts.relayClient = true
    } else if (a === '--dcutr') opts.dcutr = true
    else if (a === '--autonat') opts.autonat = true
    else if (a === '--lab-public') opts.labPublic.push(next())
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  const hooked = globalThis[Symbol.for('mimirlite.labPublic')] ?? []
  if (opts.labPublic.length > 0 && hooked.length !== opts.labPublic.length) {
    throw new Error('--lab-public needs the resolve hook: node --import ./lab-public-hook.mjs nat-peer.mjs ...')
  }
  return opts
}

const opts = parseArgs(process.argv.slice(2))

async function privateKey () {
  if (opts.keySeed == null) return undefined
  const seed = new Uint8Array(32)
  new DataView(seed.buffer).setUint32(28, opts.keySeed >>> 0)
  return await generateKeyPairFromSeed('Ed25519', seed)
}

function relayServerInit () {
  const reservations = {}
  if (opts.maxReservations != null) reservations.maxReservations = opts.maxReservations
  if (opts.dataLimit != null) reservations.defaultDataLimit = opts.dataLimit
  if (opts.durationLimit != null) reservations.defaultDurationLimit = opts.durationLimit * 1000
  if (opts.noLimit) reservations.applyDefaultLimit = false
  return { reservations }
}

const services = { identify: identify(), identifyPush: identifyPush(), ping: ping() }
if (opts.relayServer) services.relay = circuitRelayServer(relayServerInit())
if (opts.dcutr) services.dcutr = dcutr()
if (opts.autonat) services.autonat = autoNAT()

const transports = [tcp()]
if (opts.relayClient) transports.push(circuitRelayTransport())

const node = await createLibp2p({
  start: false,
  privateKey: await privateKey(),
  addresses: { listen: opts.listen },
  transports,
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionManager: { inboundConnectionThreshold: 1_000_000, maxIncomingPendingConnections: 1024 },
  services
})

await node.handle(ECHO_PROTOCOL, ({ stream }) => {
  void stream.sink(stream.source).catch(err => {
    log('echo stream failed:', err)
    stream.abort(err)
  })
}, { runOnLimitedConnection: true })

// ---------------------------------------------------------------- helpers

const timeoutOf = (req) => Number(req.timeoutMs ?? DEFAULT_TIMEOUT_MS)
const isRelayed = (ma) => ma.protoCodes().includes(290)
const connJson = (c) => ({
  peer: c.remotePeer.toString(),
  addr: c.remoteAddr.toString(),
  relayed: isRelayed(c.remoteAddr),
  limited: c.limits != null,
  direction: c.direction,
  status: c.status
})

function need (req, name) {
  if (req[name] == null) throw new Error(`${req.cmd} needs ${name}`)
  return req[name]
}

async function readAll (source) {
  const chunks = []
  for await (const chunk of source) chunks.push(chunk.subarray())
  return Buffer.concat(chunks)
}

// ---------------------------------------------------------------- commands

const commands = {
  async dial (req) {
    const conn = await node.dial(multiaddr(need(req, 'addr')), { signal: AbortSignal.timeout(timeoutOf(req)) })
    return { peerId: conn.remotePeer.toString(), relayed: isRelayed(conn.remoteAddr), limited: conn.limits != null }
  },

  async connections () {
    return { connections: node.getConnections().map(connJson) }
  },

  async addrs () {
    return { addrs: node.getMultiaddrs().map(ma => ma.toString()) }
  },

  async reserve (req) {
    if (!opts.relayClient) throw new Error('reserve needs --relay-client')
    const ma = multiaddr(need(req, 'addr')).encapsulate('/p2p-circuit')
    await withTimeout(node.components.transportManager.listen([ma]), timeoutOf(req), 'reserve')
    return { addrs: node.getMultiaddrs().map(ma => ma.toString()) }
  },

  async echo (req) {
    const target = req.addr != null ? multiaddr(req.addr) : peerIdFromString(need(req, 'peerId'))
    const signal = AbortSignal.timeout(timeoutOf(req))
    const stream = await node.dialProtocol(target, ECHO_PROTOCOL, { signal, runOnLimitedConnection: true })
    const data = new Uint8Array(Buffer.from(req.hex ?? '', 'hex'))
    const [, got] = await Promise.all([
      stream.sink((async function * () { if (data.byteLength > 0) yield data })()),
      readAll(stream.source)
    ])
    return { hex: got.toString('hex') }
  },

  async hangUp (req) {
    await node.hangUp(peerIdFromString(need(req, 'peerId')))
    return {}
  },

  async reservations () {
    const relay = node.services.relay
    if (relay == null) throw new Error('reservations needs --relay-server')
    return { reservations: [...relay.reservations.keys()].map(p => p.toString()) }
  },

  async addressMetadata () {
    const addrs = node.components.addressManager.getAddressesWithMetadata()
      .map(a => ({ addr: a.multiaddr.toString(), type: a.type, verified: a.verified }))
    return { addrs }
  },

  async labPublic (req) {
    const checked = {}
    for (const ip of req.ips ?? []) checked[ip] = isPrivateIp(ip) ?? null
    return { cidrs: opts.labPublic, private: checked }
  },

  async stop () { return {} },
  async exit () { return {} }
}

await runCommandLoop(node, commands, async () => {
  for (const addr of opts.reserve) {
    try {
      await withTimeout(node.components.transportManager.listen([multiaddr(addr).encapsulate('/p2p-circuit')]),
        DEFAULT_TIMEOUT_MS, 'reserve')
    } catch (err) {
      log(`reserve on ${addr} failed:`, err)
      await emit({ event: 'reserve-failed', addr, error: errorMessage(err) })
    }
  }
})
