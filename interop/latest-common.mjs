// Shared pieces of the latest-generation JS peers (latest-node.mjs, latest-client.mjs), which behave on
// the wire like sahilpohare/mimir-llm 464ffe1 (see /work/shared/WIRE.md, second half): one protocol per
// model, `/mimir/<sanitized model>/1.0.0`, carrying one raw HTTP/1.1 exchange (no length prefix, no JSON
// envelope). The libp2p stack is the one of mimir-common.mjs (TCP, Noise, yamux, identify), plus what the
// latest generation adds, on request only: its two kad-dht instances and @libp2p/bootstrap.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, identifyPush } from '@libp2p/identify'
import { kadDHT, removePrivateAddressesMapper } from '@libp2p/kad-dht'
import { mdns as mdnsDiscovery } from '@libp2p/mdns'
import { createLibp2p } from 'libp2p'
import { transportsFor } from './mimir-common.mjs'

export const TUNNEL_PREFIX = '/mimir/'
export const TUNNEL_VERSION = '/1.0.0'

/** The original's rule: every character outside [A-Za-z0-9._-] becomes '-'. Lossy. */
export function sanitizeModel (name) {
  return name.replace(/[^A-Za-z0-9._-]/g, '-')
}

/** `/mimir/<sanitized model>/1.0.0`. */
export function tunnelProtocol (model) {
  return `${TUNNEL_PREFIX}${sanitizeModel(model)}${TUNNEL_VERSION}`
}

const HEAD_END = Buffer.from('\r\n\r\n')

/** Read a stream's source to its end: one Buffer (the remote closed its write side). */
export async function readAll (source) {
  const parts = []
  for await (const chunk of source) {
    parts.push(Buffer.from(chunk instanceof Uint8Array ? chunk : chunk.subarray()))
  }
  return Buffer.concat(parts)
}

/**
 * Split raw HTTP/1.1 bytes into {startLine, headers: [[name, value]..], body} the permissive way a
 * hand-rolled reader does: the head ends at the first empty line, the body is everything after it
 * (Content-Length and Transfer-Encoding are not looked at). null when there is no empty line.
 */
export function splitHttp (bytes) {
  const end = bytes.indexOf(HEAD_END)
  if (end < 0) return null
  const lines = bytes.subarray(0, end).toString('latin1').split('\r\n')
  const startLine = lines.shift()
  const headers = []
  for (const line of lines) {
    const colon = line.indexOf(':')
    if (colon <= 0) continue
    headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()])
  }
  return { startLine, headers, body: bytes.subarray(end + HEAD_END.length) }
}

/**
 * libp2p as the latest generation builds it (plus test-friendly connection limits, as mimir-common.mjs).
 * dht: its two kad-dht 14.2 instances: `/ipfs/kad/1.0.0` (removePrivateAddressesMapper, client mode until
 * it has a public address) and `/ipfs/lan/kad/1.0.0` (server mode, kad-dht's default peer mapper, as the
 * original keeps it). bootstrap: multiaddrs (with /p2p/) dialed at start by @libp2p/bootstrap (the original
 * lists the public IPFS bootstrap peers; tests give local ones); the module is only loaded when asked.
 * mdns: @libp2p/mdns discovery (mdnsIntervalMs: its query interval, default 10000). relay: the circuit relay
 * v2 transport too (as mimir-common.mjs buildNode).
 */
export async function buildLatestNode ({ listen, dht = false, bootstrap = [], monitor = true, monitorIntervalMs, mdns = false, mdnsIntervalMs, relay = false }) {
  const services = {
    identify: identify(),
    identifyPush: identifyPush()
  }
  if (dht) {
    services.aminoDHT = kadDHT({ protocol: '/ipfs/kad/1.0.0', peerInfoMapper: removePrivateAddressesMapper })
    services.lanDHT = kadDHT({ protocol: '/ipfs/lan/kad/1.0.0', clientMode: false, logPrefix: 'libp2p:dht-lan', datastorePrefix: '/dht-lan', metricsPrefix: 'libp2p_dht_lan' })
  }
  if (mdns) services.mdns = mdnsDiscovery(mdnsIntervalMs != null ? { interval: mdnsIntervalMs } : {})
  const peerDiscovery = []
  if (bootstrap.length > 0) {
    const { bootstrap: bootstrapDiscovery } = await import('@libp2p/bootstrap')
    peerDiscovery.push(bootstrapDiscovery({ list: bootstrap }))
  }
  return await createLibp2p({
    start: false,
    addresses: { listen },
    transports: transportsFor(relay),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery,
    connectionManager: {
      inboundConnectionThreshold: 1_000_000,
      maxIncomingPendingConnections: 1024
    },
    connectionMonitor: {
      enabled: monitor,
      ...(monitorIntervalMs != null ? { pingInterval: monitorIntervalMs } : {})
    },
    services
  })
}
