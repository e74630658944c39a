#!/usr/bin/env node
// A JS MimirLLM client that puts on the wire exactly what the original client does (see
// /work/shared/WIRE.md), dialing one node statically instead of waiting for mDNS:
//
//   1. /mimirllm/1.0.0/identify: writes {"event":"query","request_id":<uuid4>,"data":<model CID>},
//      closes its write side, reads the first packet (5 s at most), checks event and request_id,
//      keeps the node if it lists a model the client knows for that CID, closes the stream.
//   2. /mimirllm/1.0.0: writes {"event":"message","data":{"messages":[..]}} (no model, no request_id),
//      closes its write side and reads completionPacket packets until the node closes.
// Packets go through the streaming lp.encode (varint and body as two chunks), like the original.
// Unlike the original it does not crash on the final chunk (a delta without content) and it reports a
// truncated answer (the stream ended before a chunk with a finish_reason).
//
// stdout: JSON lines:
//   {"event":"ready","peerId":..,"addrs":[..]}
//   {"event":"identify","peerId":..,"request_id":..,"cid":..,"models":[..],"known":[..],"packet":{..},"frame_sizes":[..]}
//   {"event":"delta","index":i,"content":<string|null>,"finish_reason":<string|null>,"packet":{..}}  per packet
//   {"event":"result","ok":true|false,"text":..,"models":[..],"packets":n,"finish_reason":..,
//    "frame_sizes":[..] (byte length of each data chunk the chat stream delivered, one per yamux frame),
//    "aborted"?:true, "error"?:.., and with the relay transport "relayed":bool, "limited":bool (the
//    connection to the node went through a relay / carries a relay's limits)}
// exit codes: 0 answer complete (or --identify-only / --abort-after done), 2 truncated answer,
//             3 identify failed or the node does not serve the model, 1 anything else.
//
// Flags:
//   --peer <multiaddr>        the node to dial (with /p2p/<id>); required unless --mdns
//   --mdns                    find the node as the original client does: @libp2p/mdns discovery, every peer
//                             it reports dialed and queried on identify as soon as reported; the chat goes
//                             to the first one that serves the model (exit 3 if none did before the timeout);
//                             emits {"event":"peer:discovery","peerId":..,"addrs":[..]} per peer. Pass
//                             --listen /ip4/0.0.0.0/tcp/0 to listen like the original.
//   --mdns-interval-ms <n>    mDNS query interval (@libp2p/mdns default 10000)
//   --prompt <text>           the user message (default "Hello")
//   --system <text>           the system message (default "You are a helpful assistant", as the
//                             original client sends); --no-system sends only the user message
//   --messages <json>         the whole messages array instead of --system/--prompt
//   --cid <cid>               the model CID to query (default llama3.2:latest's)
//   --any-model               go on with the chat whatever models identify lists
//   --skip-identify           no identify query; --identify-only: no chat
//   --abort-after <n>         reset the chat stream after n packets (a client leaving mid-answer)
//   --write-chunk-bytes <n>   write the chat request in pieces of n bytes, one yamux frame each (1: every
//                             byte of the varint and of the body in its own frame); default: as the
//                             original, the varint and the body as two frames
//   --timeout-ms <n>          bound on dial + chat (default 60000)
//   --listen <multiaddr>      repeatable; default /ip4/127.0.0.1/tcp/0
//   --dht, --no-monitor, --monitor-interval-ms <n>
//   --relay-client            the circuit relay v2 transport (@libp2p/circuit-relay-v2): --peer may be a
//                             relayed address <relay addr>/p2p-circuit/p2p/<node>, and the mimir streams
//                             run on limited (relayed) connections. Implied by a --peer with /p2p-circuit.
//                             A relay's limits (js-libp2p's: 128 KiB both ways, 2 min) end the connection
//                             when reached: the answer is then truncated (exit 2).
import { randomUUID } from 'node:crypto'
import { multiaddr } from '@multiformats/multiaddr'
import {
  CHAT_PROTOCOL, DEFAULT_CID, IDENTIFY_PROTOCOL, MODEL_CIDS, RELAYED_OPTIONS,
  buildNode, isRelayed, emit, errorMessage, framed, log, packetsOf, reportUncaught, setLogTag, takeFlag, tapSizes, withTimeout
} from './mimir-common.mjs'

setLogTag('mimir-client')

const IDENTIFY_TIMEOUT_MS = 5000

function parseArgs (argv) {
  const opts = {
    peer: null,
    prompt: 'Hello',
    system: 'You are a helpful assistant',
    messages: null,
    cid: DEFAULT_CID,
    anyModel: false,
    identify: true,
    chat: true,
    abortAfter: null,
    writeChunkBytes: null,
    timeoutMs: 60_000,
    listen: [],
    dht: false,
    monitor: true,
    monitorIntervalMs: undefined,
    mdns: false,
    mdnsIntervalMs: undefined,
    relay: false
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => takeFlag(argv, i++, a)
    if (a === '--peer') opts.peer = next()
    else if (a === '--prompt') opts.prompt = next()
    else if (a === '--system') opts.system = next()
    else if (a === '--no-system') opts.system = null
    else if (a === '--messages') opts.messages = JSON.parse(next())
    else if (a === '--cid') opts.cid = next()
    else if (a === '--any-model') opts.anyModel = true
    else if (a === '--skip-identify') opts.identify = false
    else if (a === '--identify-only') opts.chat = false
    else if (a === '--abort-after') opts.abortAfter = Number(next())
    else if (a === '--write-chunk-bytes') opts.writeChunkBytes = Number(next())
    else if (a === '--timeout-ms') opts.timeoutMs = Number(next())
    else if (a === '--listen') opts.listen.push(next())
    else if (a === '--dht') opts.dht = true
    else if (a === '--no-monitor') opts.monitor = false
    else if (a === '--monitor-interval-ms') opts.monitorIntervalMs = Number(next())
    else if (a === '--mdns') opts.mdns = true
    else if (a === '--mdns-interval-ms') opts.mdnsIntervalMs = Number(next())
    else if (a === '--relay-client') opts.relay = true
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.peer == null && !opts.mdns) throw new Error('--peer <multiaddr> (or --mdns) is required')
  if (opts.peer?.includes('/p2p-circuit') === true) opts.relay = true
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  if (opts.writeChunkBytes != null && !(Number.isInteger(opts.writeChunkBytes) && opts.writeChunkBytes > 0)) {
    throw new Error('--write-chunk-bytes needs a positive integer')
  }
  if (opts.messages == null) {
    opts.messages = []
    if (opts.system != null) opts.messages.push({ role: 'system', content: opts.system })
    opts.messages.push({ role: 'user', content: opts.prompt })
  }
  return opts
}

class ExitError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
    this.partial = null
  }
}

/** The identify handshake; returns the model names the node listed. */
async function identifyNode (conn, cid) {
  const signal = AbortSignal.timeout(IDENTIFY_TIMEOUT_MS)
  const stream = await conn.newStream(IDENTIFY_PROTOCOL, { signal, ...streamOptions })
  const requestId = randomUUID()
  try {
    const writing = stream.sink(framed([{ event: 'query', request_id: requestId, data: cid }]))
    const frameSizes = []
    const packets = packetsOf(tapSizes(stream.source, frameSizes))
    const first = await withTimeout(packets.next(), IDENTIFY_TIMEOUT_MS, 'identify answer')
    await writing
    if (first.done) throw new Error('identify stream ended without an answer')
    const packet = first.value
    if (packet?.event !== 'response') throw new Error(`identify answered a "${packet?.event}" packet`)
    if (packet.request_id !== requestId) throw new Error(`identify answered request_id ${packet.request_id}, not ${requestId}`)
    if (!Array.isArray(packet.data)) throw new Error('identify answer data is not a list of models')
    const models = packet.data
    const known = models.filter(m => MODEL_CIDS[cid] === m)
    await emit({ event: 'identify', peerId: conn.remotePeer.toString(), request_id: requestId, cid, models, known, packet, frame_sizes: frameSizes })
    await stream.close()
    return { models, known }
  } catch (err) {
    stream.abort(err)
    throw err
  }
}

/** Re-cut a byte source into pieces of at most n bytes (each goes out as its own yamux frame). */
async function * rechunked (source, n) {
  for await (const chunk of source) {
    const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
    for (let i = 0; i < bytes.byteLength; i += n) yield bytes.subarray(i, i + n)
  }
}

/** The chat; returns {text, packets, finish_reason}; throws ExitError(2) on a truncated answer. */
async function chat (conn, messages, abortAfter, signal, writeChunkBytes) {
  const stream = await conn.newStream(CHAT_PROTOCOL, { signal, ...streamOptions })
  const request = framed([{ event: 'message', data: { messages } }])
  const writing = stream.sink(writeChunkBytes != null ? rechunked(request, writeChunkBytes) : request)
  const frameSizes = []
  let text = ''
  let packets = 0
  let finishReason = null
  let error = null
  const onAbort = () => stream.abort(new Error('chat timed out'))
  signal.addEventListener('abort', onAbort)
  try {
    for await (const packet of packetsOf(tapSizes(stream.source, frameSizes))) {
      const choice = packet?.data?.choices?.[0]
      const content = typeof choice?.delta?.content === 'string' ? choice.delta.content : null
      const reason = choice?.finish_reason ?? null
      if (packet?.event !== 'completionPacket') log('unexpected packet', packet?.event)
      await emit({ event: 'delta', index: packets, content, finish_reason: reason, packet })
      packets++
      if (content != null) text += content
      if (reason != null && finishReason == null) finishReason = reason
      if (abortAfter != null && packets >= abortAfter) {
        stream.abort(new Error('client left'))
        return { text, packets, finish_reason: finishReason, frame_sizes: frameSizes, aborted: true }
      }
    }
    await writing
  } catch (err) {
    error = errorMessage(err)
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
  if (finishReason == null) {
    stream.abort(new Error('truncated'))
    const err = new ExitError(2, `truncated answer: the stream ended after ${packets} packets without a finish_reason${error != null ? ` (${error})` : ''}`)
    err.partial = { text, packets, finish_reason: null, frame_sizes: frameSizes }
    throw err
  }
  await stream.close().catch(() => {})
  return { text, packets, finish_reason: finishReason, frame_sizes: frameSizes }
}

/**
 * --mdns without --peer, as the original client: every peer mDNS reports is dialed and queried on identify
 * as soon as it is reported. first(signal) resolves with the first one serving the model: {conn, models}.
 */
function discoverNodes (node) {
  let found = null
  let wake = null
  const onPeer = (evt) => {
    const peerId = evt.detail.id
    void emit({ event: 'peer:discovery', peerId: peerId.toString(), addrs: evt.detail.multiaddrs.map(ma => ma.toString()) })
    const use = async () => {
      const conn = await node.dial(peerId, { signal: AbortSignal.timeout(opts.timeoutMs) })
      if (!opts.identify) return { conn, models: null }
      const { models, known } = await identifyNode(conn, opts.cid)
      if (known.length === 0 && !opts.anyModel) throw new Error(`it does not serve ${opts.cid}; it lists ${JSON.stringify(models)}`)
      return { conn, models }
    }
    use().then(
      (candidate) => {
        if (found != null) return
        found = candidate
        if (wake != null) wake()
      },
      (err) => log('discovered peer', peerId.toString(), 'not used:', errorMessage(err))
    )
  }
  node.addEventListener('peer:discovery', onPeer)
  return {
    async first (signal) {
      let onAbort = null
      try {
        if (found == null) {
          await new Promise((resolve, reject) => {
            wake = resolve
            onAbort = () => reject(new ExitError(3, 'no node serving the model was found by mDNS in time'))
            if (signal.aborted) onAbort()
            else signal.addEventListener('abort', onAbort)
          })
        }
        return found
      } finally {
        if (onAbort != null) signal.removeEventListener('abort', onAbort)
        node.removeEventListener('peer:discovery', onPeer)
      }
    }
  }
}

const opts = parseArgs(process.argv.slice(2))
const streamOptions = opts.relay ? RELAYED_OPTIONS : {}
reportUncaught()
const node = await buildNode({
  listen: opts.listen,
  dht: opts.dht,
  monitor: opts.monitor,
  monitorIntervalMs: opts.monitorIntervalMs,
  mdns: opts.mdns,
  mdnsIntervalMs: opts.mdnsIntervalMs,
  relay: opts.relay
})
const discovery = opts.peer == null ? discoverNodes(node) : null // listening before mDNS starts
await node.start()
await emit({ event: 'ready', peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(ma => ma.toString()) })

let code = 0
const result = { event: 'result', ok: false, text: '', models: null, packets: 0, finish_reason: null }
const signal = AbortSignal.timeout(opts.timeoutMs)
try {
  let conn
  if (discovery != null) {
    const found = await discovery.first(signal)
    conn = found.conn
    result.models = found.models
  } else {
    conn = await node.dial(multiaddr(opts.peer), { signal })
  }
  result.peerId = conn.remotePeer.toString()
  if (opts.relay) Object.assign(result, { relayed: isRelayed(conn.remoteAddr), limited: conn.limits != null })
  if (opts.identify && discovery == null) {
    let found
    try {
      found = await identifyNode(conn, opts.cid)
    } catch (err) {
      throw new ExitError(3, `identify failed: ${errorMessage(err)}`)
    }
    result.models = found.models
    if (found.known.length === 0 && !opts.anyModel) {
      throw new ExitError(3, `the node does not serve ${opts.cid} (${MODEL_CIDS[opts.cid] ?? 'unknown model'}); it lists ${JSON.stringify(found.models)}`)
    }
  }
  if (opts.chat) {
    Object.assign(result, await chat(conn, opts.messages, opts.abortAfter, signal, opts.writeChunkBytes))
  }
  result.ok = true
} catch (err) {
  code = err instanceof ExitError ? err.code : 1
  if (err.partial != null) Object.assign(result, err.partial)
  result.error = err instanceof ExitError ? err.message : errorMessage(err)
  log(result.error)
}
if (result.aborted === true) result.ok = false
await emit(result)
try {
  await withTimeout(node.stop(), 5000, 'libp2p stop')
} catch (err) {
  log('stop failed', err)
}
process.exit(code)
