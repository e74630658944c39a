#!/usr/bin/env node
// A scriptable js-libp2p 2.5 Kademlia DHT peer (@libp2p/kad-dht 14.2.0) for mimirlite's DHT tests.
// Stack: TCP, Noise, yamux, identify (+ push), ping, kad-dht; driven by interop/jskad.py.
//
// stdout: JSON lines only: {"event":"ready","peerId":..,"addrs":[..]}, then answers {"id":..,"ok":..}.
// stderr: diagnostics.
// stdin:  JSON line commands, run concurrently: {"id": 1, "cmd": "dial", "addr": "/ip4/..."}
//
// Flags:
//   --listen ADDR        default /ip4/127.0.0.1/tcp/0
//   --protocol P         /ipfs/lan/kad/1.0.0 (default) or /ipfs/kad/1.0.0
//   --client-mode        do not serve the DHT protocol (default: server mode)
//   --key-seed N         Ed25519 identity from the 32-byte seed: 28 zero bytes and N as uint32 big-endian
//   --bootstrap ADDR     repeatable: dialed once started
//
// The LAN DHT maps peer addresses with kad-dht's removePublicAddressesMapper (as the original MimirLLM
// does); /ipfs/kad/1.0.0 uses passthroughMapper, not kad-dht's default removePrivateAddressesMapper,
// so that peers on 127.0.0.1 are answered with their addresses.
//
// Commands (answers add "ok": true, or "ok": false and "error"):
//   dial {addr}                         -> {peerId}
//   provide {cid, timeoutMs?}           -> {}
//   findProviders {cid, timeoutMs?, count?} -> {providers: [{id, addrs}]} (until the query ends, count
//                                          providers are found, or timeoutMs)
//   findPeer {peerId, timeoutMs?}       -> {peer: {id, addrs}}
//   getClosestPeers {key (hex), timeoutMs?} -> {peers: [{id, addrs}]}
//   routingTable                        -> {peers: [peer id, ...]}
//   send {peerId, message: {type, key?, record?, clusterLevel?, closer?, providers?}, noResponse?, timeoutMs?}
//        one raw kad request through kad-dht's own Network (sendRequest; sendMessage with noResponse)
//        key/record hex, closer/providers [{id, addrs}] -> {response: {type, closer, providers, record}}
//   stop / exit                         -> {} then the process stops
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify, identifyPush } from '@libp2p/identify'
import { kadDHT, passthroughMapper, removePublicAddressesMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'
import { emit, errorMessage, log, runCommandLoop, setLogTag } from './mimir-common.mjs'

setLogTag('kad')
const DEFAULT_TIMEOUT_MS = 30_000
const LAN = '/ipfs/lan/kad/1.0.0'
const WAN = '/ipfs/kad/1.0.0'

function parseArgs (argv) {
  const opts = { listen: [], protocol: LAN, clientMode: false, keySeed: undefined, bootstrap: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--listen') opts.listen.push(next())
    else if (a === '--protocol') opts.protocol = next()
    else if (a === '--client-mode') opts.clientMode = true
    else if (a === '--key-seed') opts.keySeed = Number(next())
    else if (a === '--bootstrap') opts.bootstrap.push(next())
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.protocol !== LAN && opts.protocol !== WAN) throw new Error(`--protocol must be ${LAN} or ${WAN}`)
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  return opts
}

const opts = parseArgs(process.argv.slice(2))

async function privateKey () {
  if (opts.keySeed == null) return undefined
  const seed = new Uint8Array(32)
  new DataView(seed.buffer).setUint32(28, opts.keySeed >>> 0)
  return await generateKeyPairFromSeed('Ed25519', seed)
}

const node = await createLibp2p({
  start: false,
  privateKey: await privateKey(),
  addresses: { listen: opts.listen },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionManager: { inboundConnectionThreshold: 1_000_000, maxIncomingPendingConnections: 1024 },
  services: {
    identify: identify(),
    identifyPush: identifyPush(),
    ping: ping(),
    dht: kadDHT({
      protocol: opts.protocol,
      clientMode: opts.clientMode,
      peerInfoMapper: opts.protocol === LAN ? removePublicAddressesMapper : passthroughMapper
    })
  }
})
const dht = node.services.dht

// ---------------------------------------------------------------- helpers

const hex = (u8) => Buffer.from(u8 ?? new Uint8Array(0)).toString('hex')
const unhex = (s) => new Uint8Array(Buffer.from(s ?? '', 'hex'))
const timeoutOf = (req) => Number(req.timeoutMs ?? DEFAULT_TIMEOUT_MS)
const peerJson = (p) => ({ id: p.id.toString(), addrs: (p.multiaddrs ?? []).map(ma => ma.toString()) })

function need (req, name) {
  if (req[name] == null) throw new Error(`${req.cmd} needs ${name}`)
  return req[name]
}

function pbPeer (p) {
  return { id: peerIdFromString(p.id).toMultihash().bytes, multiaddrs: (p.addrs ?? []).map(a => multiaddr(a).bytes) }
}

function kadMessage (m) {
  const msg = { type: m.type, closer: (m.closer ?? []).map(pbPeer), providers: (m.providers ?? []).map(pbPeer) }
  if (m.key != null) msg.key = unhex(m.key)
  if (m.record != null) msg.record = unhex(m.record)
  if (m.clusterLevel != null) msg.clusterLevel = m.clusterLevel
  return msg
}

/** Iterate a query until it ends, `stop(item)` says so, or the timeout; an abort by our timeout ends it quietly. */
async function collect (makeIter, ms, stop = () => false) {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), ms)
  const out = []
  try {
    for await (const item of makeIter(controller.signal)) {
      out.push(item)
      if (stop(item, out)) break
    }
  } catch (err) {
    if (!controller.signal.aborted) throw err
  } finally {
    clearTimeout(timer)
  }
  return out
}

// ---------------------------------------------------------------- commands

const commands = {
  async dial (req) {
    const conn = await node.dial(multiaddr(need(req, 'addr')), { signal: AbortSignal.timeout(timeoutOf(req)) })
    return { peerId: conn.remotePeer.toString() }
  },

  async provide (req) {
    await node.contentRouting.provide(CID.parse(need(req, 'cid')), { signal: AbortSignal.timeout(timeoutOf(req)) })
    return {}
  },

  async findProviders (req) {
    const cid = CID.parse(need(req, 'cid'))
    const count = req.count ?? Infinity
    const found = await collect(signal => node.contentRouting.findProviders(cid, { signal }), timeoutOf(req),
      (_p, all) => all.length >= count)
    return { providers: found.map(peerJson) }
  },

  async findPeer (req) {
    const info = await node.peerRouting.findPeer(peerIdFromString(need(req, 'peerId')),
      { signal: AbortSignal.timeout(timeoutOf(req)) })
    return { peer: peerJson(info) }
  },

  async getClosestPeers (req) {
    const key = unhex(need(req, 'key'))
    const found = await collect(signal => node.peerRouting.getClosestPeers(key, { signal }), timeoutOf(req))
    return { peers: found.map(peerJson) }
  },

  async routingTable () {
    const peers = [...dht.routingTable.kb.toIterable()]
      .map(c => c.peerId)
      .filter(id => !id.equals(node.peerId))
      .map(id => id.toString())
    return { peers }
  },

  async send (req) {
    const to = peerIdFromString(need(req, 'peerId'))
    const msg = kadMessage(need(req, 'message'))
    const options = { signal: AbortSignal.timeout(timeoutOf(req)) }
    const events = req.noResponse ? dht.network.sendMessage(to, msg, options) : dht.network.sendRequest(to, msg, options)
    for await (const event of events) {
      if (event.name === 'QUERY_ERROR') throw event.error
      if (event.name === 'PEER_RESPONSE') {
        return {
          response: {
            type: event.messageType,
            closer: (event.closer ?? []).map(peerJson),
            providers: (event.providers ?? []).map(peerJson),
            record: event.record == null ? null : { key: hex(event.record.key), value: hex(event.record.value) }
          }
        }
      }
    }
    throw new Error('no response (is the DHT running?)')
  },

  async stop () { return {} },
  async exit () { return {} }
}

await runCommandLoop(node, commands, async () => {
  for (const addr of opts.bootstrap) {
    try {
      await node.dial(multiaddr(addr), { signal: AbortSignal.timeout(DEFAULT_TIMEOUT_MS) })
    } catch (err) {
      log(`bootstrap dial ${addr} failed:`, err)
      await emit({ event: 'bootstrap-failed', addr, error: errorMessage(err) })
    }
  }
})
