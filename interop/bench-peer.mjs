#!/usr/bin/env node
// One side of a benchmark run on the pinned js-libp2p stack (the libp2p construction of peer.mjs:
// TCP + Noise + yamux), started by interop/bench.py. Mirrors interop/bench_worker.py's wire shapes.
//
//   node bench-peer.mjs listen
//       serves /bench/{echo,bulk,tokens,rpc}/1.0.0, prints {"event":"ready","addr":...},
//       runs until stdin closes or SIGTERM/SIGINT.
//   node bench-peer.mjs dial --addr <multiaddr> [--params <json>]
//       runs the workloads, one {"event":"result"|"error","workload":...} line each, then {"event":"done"}.
//
// Only transport, encrypter and muxer: no identify, DHT, mDNS or connection monitor (the other peers of
// the benchmark run none either).
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import * as lp from 'it-length-prefixed'
import { createLibp2p } from 'libp2p'
import { Uint8ArrayList } from 'uint8arraylist'

const ECHO = '/bench/echo/1.0.0'
const BULK = '/bench/bulk/1.0.0'
const TOKENS = '/bench/tokens/1.0.0'
const RPC = '/bench/rpc/1.0.0'
const STREAM_LIMITS = { maxInboundStreams: 1024, maxOutboundStreams: 1024 }

const WORDS = ('the quick brown fox jumps over the lazy dog while a large language model streams its answer ' +
  'one token at a time to every peer that asked').split(' ')

const DEFAULTS = {
  workloads: ['W1', 'W2', 'W3', 'W4'],
  connects: 100,
  connect_warmup: 5,
  bulk_bytes: 256 * 1024 * 1024,
  chunk: 64 * 1024,
  tokens: 100_000,
  tokens_cap_s: 30,
  rpc_seq: 2000,
  rpc_warmup: 50,
  rpc_workers: 100,
  rpc_per_worker: 20,
  timeout: 120
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

function tokenMessage () {
  return {
    event: 'completionPacket',
    data: {
      id: 'chatcmpl-492',
      object: 'chat.completion.chunk',
      created: 1764000000,
      model: 'llama3.2:latest',
      choices: [{ index: 0, delta: { content: '' }, finish_reason: null }]
    }
  }
}

function rpcRequest (i) {
  return { method: 'bench.echo', id: i, params: { text: 'the quick brown fox jumps over the dog' } }
}

function emit (obj) {
  return new Promise(resolve => { process.stdout.write(JSON.stringify(obj) + '\n', () => resolve()) })
}

function log (...args) {
  process.stderr.write(`[bench-peer ${process.pid}] ${args.map(a => (a instanceof Error ? (a.stack ?? String(a)) : String(a))).join(' ')}\n`)
}

function errorMessage (err) {
  if (err == null) return 'unknown error'
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

function percentile (samples, q) {
  const ordered = [...samples].sort((a, b) => a - b)
  const k = Math.max(1, Math.ceil(q / 100 * ordered.length))
  return ordered[k - 1]
}

function median (samples) {
  const o = [...samples].sort((a, b) => a - b)
  const m = o.length >> 1
  return o.length % 2 === 1 ? o[m] : (o[m - 1] + o[m]) / 2
}

function u64 (n) {
  const b = new Uint8Array(8)
  new DataView(b.buffer).setBigUint64(0, BigInt(n))
  return b
}

function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Read the first 8 bytes of a source as a big-endian count; returns [count, bytes read past them]. */
async function readHeader (iterator) {
  const head = new Uint8ArrayList()
  while (head.byteLength < 8) {
    const { value, done } = await iterator.next()
    if (done) throw new Error('stream ended inside the 8-byte header')
    head.append(value)
  }
  const h = head.subarray(0, 8)
  return [Number(new DataView(h.buffer, h.byteOffset, 8).getBigUint64(0)), head.byteLength - 8]
}

async function createNode (listen) {
  return await createLibp2p({
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: {
      inboundConnectionThreshold: 1_000_000,
      maxIncomingPendingConnections: 1024
    },
    connectionMonitor: { enabled: false },
    services: {}
  })
}

// ---------------------------------------------------------------- listener

async function listen () {
  const node = await createNode(['/ip4/127.0.0.1/tcp/0'])

  await node.handle(ECHO, ({ stream }) => {
    stream.sink(stream.source).catch(err => { stream.abort(err) })
  }, STREAM_LIMITS)

  await node.handle(BULK, ({ stream }) => {
    (async () => {
      const it = stream.source[Symbol.asyncIterator]()
      const [total, extra] = await readHeader(it)
      let got = extra
      while (got < total) {
        const { value, done } = await it.next()
        if (done) throw new Error(`bulk stream ended after ${got} of ${total} bytes`)
        got += value.byteLength
      }
      const ack = stream.sink([Uint8Array.of(1)])
      for (;;) { // until the dialer closes
        const { done } = await it.next()
        if (done) break
      }
      await ack
    })().catch(err => { log('bulk', err); stream.abort(err) })
  }, STREAM_LIMITS)

  await node.handle(TOKENS, ({ stream }) => {
    (async () => {
      const it = stream.source[Symbol.asyncIterator]()
      const [n] = await readHeader(it)
      const msg = tokenMessage()
      const delta = msg.data.choices[0].delta
      await stream.sink((function * () {
        for (let i = 0; i < n; i++) {
          delta.content = ' ' + WORDS[i % WORDS.length]
          yield lp.encode.single(encoder.encode(JSON.stringify(msg))) // one write per message
        }
      })())
    })().catch(err => { log('tokens', err); stream.abort(err) })
  }, STREAM_LIMITS)

  await node.handle(RPC, ({ stream }) => {
    (async () => {
      const it = lp.decode(stream.source)[Symbol.asyncIterator]()
      const { value, done } = await it.next()
      if (done) throw new Error('rpc stream ended before a request')
      const req = JSON.parse(decoder.decode(value.subarray()))
      await stream.sink([lp.encode.single(encoder.encode(JSON.stringify({ id: req.id, result: req.params })))])
    })().catch(err => { log('rpc', err); stream.abort(err) })
  }, STREAM_LIMITS)

  await node.start()
  const addrs = node.getMultiaddrs().map(ma => ma.toString())
  await emit({ event: 'ready', addr: addrs[0], pid: process.pid })

  let stopping = false
  const stop = async (why) => {
    if (stopping) return
    stopping = true
    log(`stopping (${why})`)
    try { await withTimeout(node.stop(), 5000, 'libp2p stop') } catch (err) { log('stop failed', err) }
    process.exit(0)
  }
  process.on('SIGTERM', () => { void stop('SIGTERM') })
  process.on('SIGINT', () => { void stop('SIGINT') })
  process.stdin.on('end', () => { void stop('stdin closed') })
  process.stdin.on('error', () => { void stop('stdin error') })
  process.stdin.resume()
}

// ---------------------------------------------------------------- dialer

async function dial (addr, params) {
  const node = await createNode([])
  await node.start()
  const ma = multiaddr(addr)

  async function w1 () {
    const samples = []
    const one = Uint8Array.of(0x78)
    for (let i = 0; i < params.connect_warmup + params.connects; i++) {
      const t0 = performance.now()
      const conn = await node.dial(ma)
      const stream = await conn.newStream(ECHO, STREAM_LIMITS)
      const reading = (async () => {
        for await (const chunk of stream.source) {
          if (chunk.byteLength > 0) return chunk.subarray()
        }
        throw new Error('echo stream ended without a byte')
      })()
      await stream.sink([one]) // writes the byte, then closes our write side
      const got = await reading
      const t1 = performance.now()
      if (got[0] !== 0x78) throw new Error('echo mismatch')
      await conn.close()
      if (i >= params.connect_warmup) samples.push(t1 - t0)
    }
    return { p50_ms: percentile(samples, 50), p95_ms: percentile(samples, 95) }
  }

  async function w2 () {
    const total = params.bulk_bytes
    const chunk = params.chunk
    const buf = randomBytes(chunk)
    const conn = await node.dial(ma)
    const stream = await conn.newStream(BULK, STREAM_LIMITS)
    const t0 = performance.now()
    const ack = (async () => {
      for await (const c of stream.source) {
        if (c.byteLength > 0) return performance.now()
      }
      throw new Error('bulk stream ended without an ack')
    })()
    await stream.sink((function * () {
      yield u64(total)
      let left = total
      while (left >= chunk) { yield buf; left -= chunk }
      if (left > 0) yield buf.subarray(0, left)
    })())
    const t1 = await ack
    await stream.close().catch(() => {})
    await conn.close() // every workload starts on a fresh connection
    return { mib_s: total / ((t1 - t0) / 1000) / 2 ** 20 }
  }

  async function w3 () {
    const n = params.tokens
    const conn = await node.dial(ma)
    const stream = await conn.newStream(TOKENS, STREAM_LIMITS)
    const t0 = performance.now()
    await stream.sink([u64(n)]) // closes our write side
    let count = 0
    let t1 = 0
    let last = null
    let capped = false
    const cap = t0 + params.tokens_cap_s * 1000
    for await (const msg of lp.decode(stream.source)) {
      last = JSON.parse(decoder.decode(msg.subarray()))
      count++
      if (count === n) t1 = performance.now()
      if ((count & 1023) === 0 && count < n && performance.now() > cap) {
        capped = true
        break
      }
    }
    if (!capped && count < n) throw new Error(`token stream ended after ${count} of ${n} messages`)
    if (!last.data.choices[0].delta.content) throw new Error('empty token')
    if (capped) {
      t1 = performance.now()
      if (stream.status === 'open') stream.abort(new Error('token run capped'))
      await conn.close()
      return { msg_s: count / ((t1 - t0) / 1000), capped: count }
    }
    if (count !== n) throw new Error(`${count} token messages of ${n}`)
    await conn.close()
    return { msg_s: n / ((t1 - t0) / 1000) }
  }

  async function oneRpc (conn, i) {
    const stream = await conn.newStream(RPC, STREAM_LIMITS)
    await stream.sink([lp.encode.single(encoder.encode(JSON.stringify(rpcRequest(i))))]) // then closes write
    const it = lp.decode(stream.source)[Symbol.asyncIterator]()
    const { value, done } = await it.next()
    if (done) throw new Error('rpc stream ended before a reply')
    const reply = JSON.parse(decoder.decode(value.subarray()))
    if (reply.id !== i) throw new Error(`bad rpc reply ${JSON.stringify(reply)}`)
    await stream.close()
  }

  async function w4 () {
    const conn = await node.dial(ma)
    for (let i = 0; i < params.rpc_warmup; i++) await oneRpc(conn, i)
    const samples = []
    const start = performance.now()
    for (let i = 0; i < params.rpc_seq; i++) {
      const t0 = performance.now()
      await oneRpc(conn, i)
      samples.push(performance.now() - t0)
    }
    const seqElapsed = (performance.now() - start) / 1000
    const t0 = performance.now()
    await Promise.all(Array.from({ length: params.rpc_workers }, async (_, w) => {
      for (let j = 0; j < params.rpc_per_worker; j++) await oneRpc(conn, w * 100_000 + j)
    }))
    const concElapsed = (performance.now() - t0) / 1000
    await conn.close()
    return {
      seq_p50_ms: median(samples),
      seq_req_s: params.rpc_seq / seqElapsed,
      conc_req_s: params.rpc_workers * params.rpc_per_worker / concElapsed
    }
  }

  const table = { W1: w1, W2: w2, W3: w3, W4: w4 }
  for (const name of params.workloads) {
    const fn = table[name]
    if (fn == null) continue
    try {
      const values = await withTimeout(fn(), params.timeout * 1000, name)
      await emit({ event: 'result', workload: name, values })
    } catch (err) {
      log(name, err)
      await emit({ event: 'error', workload: name, error: errorMessage(err) })
    }
  }
  await emit({ event: 'done' })
  try { await withTimeout(node.stop(), 5000, 'libp2p stop') } catch (err) { log('stop failed', err) }
  process.exit(0)
}

// ---------------------------------------------------------------- main

function parseArgs (argv) {
  const opts = { mode: argv[0], addr: '', params: {} }
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--addr') opts.addr = argv[++i]
    else if (a === '--params') opts.params = JSON.parse(argv[++i])
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.mode !== 'listen' && opts.mode !== 'dial') throw new Error('mode must be listen or dial')
  return opts
}

process.on('unhandledRejection', (err) => { log('unhandledRejection', err) })
process.on('uncaughtException', (err) => { log('uncaughtException', err) })

const opts = parseArgs(process.argv.slice(2))
if (opts.mode === 'listen') {
  await listen()
} else {
  // a dialer also stops when the runner goes away
  process.stdin.on('end', () => { log('stdin closed'); process.exit(1) })
  process.stdin.resume()
  await dial(opts.addr, { ...DEFAULTS, ...opts.params })
}
