#!/usr/bin/env node
// A JS MimirLLM node that behaves on the wire like the original one (see /work/shared/WIRE.md):
//
//   /mimirllm/1.0.0/identify  reads a {"event":"query","request_id":..,"data":<cid>} packet and answers
//                             {"event":"response","request_id":<same>,"data":[<model names>]}, then closes
//                             its write side.
//   /mimirllm/1.0.0           reads one {"event":"message","data":{"messages":[..]}} packet, calls the
//                             OpenAI-compatible backend with the official openai SDK (stream on) and
//                             writes every streamed chunk as {"event":"completionPacket","data":<chunk>}
//                             through the streaming lp.encode (varint and body as two chunks), then
//                             closes its write side. No completionStart / completionStop.
//
// Like the original, a backend error is not reported on the wire. What happens to the stream:
//   --on-backend-error reset (default)  the stream is reset (yamux RST) after the packets already sent;
//   --on-backend-error close            the node closes its write side cleanly;
//   --on-backend-error hang             nothing: the stream stays open until the connection goes (a
//                                       failing source piped into the stream.sink that libp2p hands
//                                       a protocol handler rejects without ending the stream).
// Nothing crashes: such errors become "completion" events with ok false.
//
// stdout: JSON lines: one "ready" event ({peerId, addrs, models, backend, circuitAddrs}), then events:
//   connection:open / connection:close ({peerId, remoteAddr, relayed, limited}; direction on open),
//   identify_query and message (with frame_sizes: the byte length of each data chunk received on that
//   stream up to that packet), completion, uncaught, reserve-failed ({addr, error}).
// stderr: diagnostics.  stdin: EOF or a line "exit" stops the node.
//
// Flags:
//   --listen <multiaddr>          repeatable; default /ip4/127.0.0.1/tcp/0
//   --backend-url <url>           OpenAI-compatible base URL (default: $OLLAMA_ENDPOINT); required
//   --model <name>                model asked of the backend and listed by identify; repeatable (the
//                                 first one is used for chat); default llama3.2:latest
//   --api-key <key>               default $OPENAI_API_KEY, else "ollama"
//   --max-retries <n>             backend retries (openai SDK default 2)
//   --backend-timeout-ms <n>      backend request timeout (openai SDK default)
//   --on-backend-error reset|close|hang
//   --dht                         add kad-dht like the original
//   --max-streams <n>             inbound/outbound stream limits of the mimir handlers (libp2p defaults)
//   --max-connections <n>         the connection manager's maxConnections (libp2p default)
//   --no-monitor, --monitor-interval-ms <n>
//   --mdns                        add @libp2p/mdns discovery like the original (with --listen
//                                 /ip4/0.0.0.0/tcp/0, as the original listens, it is announced on the LAN)
//   --mdns-interval-ms <n>        mDNS query interval (@libp2p/mdns default 10000)
//   --reserve <multiaddr>         repeatable: reserve a slot on that circuit relay v2 (an address ending in
//                                 /p2p/<relay>) before "ready", i.e. listen on ADDR/p2p-circuit (the
//                                 @libp2p/circuit-relay-v2 transport); the relayed addresses
//                                 (<relay addr>/p2p-circuit/p2p/<id>) are the ready event's circuitAddrs.
//                                 With it the mimir handlers also run on limited (relayed) connections;
//                                 a relay's limits (js-libp2p's: 128 KiB both ways, 2 min) end the
//                                 connection, hence the answer, when reached.
import OpenAI from 'openai'
import {
  CHAT_PROTOCOL, DEFAULT_MODEL, IDENTIFY_PROTOCOL,
  RELAYED_OPTIONS, buildNode, connectionFields, emit, errorMessage, framed, log, packetsOf, reportUncaught,
  reserveOn, serveUntilStopped, setLogTag, takeFlag, tapSizes
} from './mimir-common.mjs'

setLogTag('mimir-node')

function parseArgs (argv) {
  const opts = {
    listen: [],
    backendUrl: process.env.OLLAMA_ENDPOINT,
    models: [],
    apiKey: process.env.OPENAI_API_KEY ?? 'ollama',
    maxRetries: undefined,
    backendTimeoutMs: undefined,
    onBackendError: 'reset',
    dht: false,
    maxStreams: undefined,
    maxConnections: undefined,
    monitor: true,
    monitorIntervalMs: undefined,
    mdns: false,
    mdnsIntervalMs: undefined,
    reserve: []
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => takeFlag(argv, i++, a)
    if (a === '--listen') opts.listen.push(next())
    else if (a === '--backend-url') opts.backendUrl = next()
    else if (a === '--model') opts.models.push(next())
    else if (a === '--api-key') opts.apiKey = next()
    else if (a === '--max-retries') opts.maxRetries = Number(next())
    else if (a === '--backend-timeout-ms') opts.backendTimeoutMs = Number(next())
    else if (a === '--on-backend-error') opts.onBackendError = next()
    else if (a === '--dht') opts.dht = true
    else if (a === '--max-streams') opts.maxStreams = Number(next())
    else if (a === '--max-connections') opts.maxConnections = Number(next())
    else if (a === '--no-monitor') opts.monitor = false
    else if (a === '--monitor-interval-ms') opts.monitorIntervalMs = Number(next())
    else if (a === '--mdns') opts.mdns = true
    else if (a === '--mdns-interval-ms') opts.mdnsIntervalMs = Number(next())
    else if (a === '--reserve') opts.reserve.push(next())
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  if (opts.models.length === 0) opts.models.push(DEFAULT_MODEL)
  if (opts.backendUrl == null || opts.backendUrl === '') throw new Error('no backend: pass --backend-url or set OLLAMA_ENDPOINT')
  if (!['reset', 'close', 'hang'].includes(opts.onBackendError)) throw new Error('--on-backend-error must be reset, close or hang')
  return opts
}

const opts = parseArgs(process.argv.slice(2))
reportUncaught()

const openai = new OpenAI({
  baseURL: opts.backendUrl,
  apiKey: opts.apiKey,
  ...(opts.maxRetries != null ? { maxRetries: opts.maxRetries } : {}),
  ...(opts.backendTimeoutMs != null ? { timeout: opts.backendTimeoutMs } : {})
})

const node = await buildNode({
  listen: opts.listen,
  dht: opts.dht,
  monitor: opts.monitor,
  monitorIntervalMs: opts.monitorIntervalMs,
  mdns: opts.mdns,
  mdnsIntervalMs: opts.mdnsIntervalMs,
  relay: opts.reserve.length > 0,
  maxConnections: opts.maxConnections
})
const handlerOptions = {
  ...(opts.maxStreams != null ? { maxInboundStreams: opts.maxStreams, maxOutboundStreams: opts.maxStreams } : {}),
  ...(opts.reserve.length > 0 ? RELAYED_OPTIONS : {})
}

node.addEventListener('connection:open', (evt) => {
  const c = evt.detail
  void emit({ event: 'connection:open', ...connectionFields(c), direction: c.direction })
})
node.addEventListener('connection:close', (evt) => {
  void emit({ event: 'connection:close', ...connectionFields(evt.detail) })
})

// ---------------------------------------------------------------- /mimirllm/1.0.0/identify

async function handleIdentify ({ stream, connection }) {
  const peerId = connection.remotePeer.toString()
  let writing = null
  const frameSizes = []
  try {
    for await (const packet of packetsOf(tapSizes(stream.source, frameSizes))) {
      void emit({ event: 'identify_query', peerId, packet, frame_sizes: [...frameSizes] })
      if (writing != null || packet?.event !== 'query') continue
      const response = { event: 'response', request_id: packet.request_id, data: opts.models }
      // one packet, then the sink closes our write side
      writing = stream.sink(framed([response]))
    }
  } catch (err) {
    log('identify stream from', peerId, errorMessage(err))
    stream.abort(err)
  }
  if (writing != null) {
    await writing.catch(err => {
      log('identify answer to', peerId, errorMessage(err))
      stream.abort(err)
    })
  } else {
    await stream.close().catch(() => {})
  }
}

// ---------------------------------------------------------------- /mimirllm/1.0.0

async function answer (stream, packet, peerId, controller) {
  const model = opts.models[0]
  const messages = packet.data?.messages
  const stats = { packets: 0, finish_reason: null, backend_error: null }
  async function * chunks () {
    try {
      const completion = await openai.chat.completions.create(
        { model, messages, stream: true },
        { signal: controller.signal }
      )
      for await (const chunk of completion) {
        stats.packets++
        stats.finish_reason ??= chunk.choices?.[0]?.finish_reason ?? null
        yield { event: 'completionPacket', data: chunk }
      }
    } catch (err) {
      if (controller.signal.aborted) throw err
      stats.backend_error = errorMessage(err)
      log('backend error', stats.backend_error)
      if (opts.onBackendError !== 'close') throw err
    }
  }
  try {
    await stream.sink(framed(chunks()))
    await emit({ event: 'completion', peerId, ok: stats.backend_error == null, ...stats })
  } catch (err) {
    // stream.sink is multistream-select's wrapper here: a failing source rejects it without
    // touching the yamux stream, which would stay open forever. Reset it, as a throwing source
    // does on a bare libp2p stream.
    const hang = stats.backend_error != null && opts.onBackendError === 'hang'
    if (!hang) stream.abort(err)
    controller.abort()
    await emit({ event: 'completion', peerId, ok: false, ...stats, error: errorMessage(err), reset: !hang })
  }
}

async function handleChat ({ stream, connection }) {
  const peerId = connection.remotePeer.toString()
  const controller = new AbortController()
  let answering = null
  const frameSizes = []
  try {
    for await (const packet of packetsOf(tapSizes(stream.source, frameSizes))) {
      if (answering != null) {
        log('ignoring a further packet from', peerId)
        continue
      }
      if (packet?.event !== 'message') {
        log('ignoring a packet that is not a message from', peerId, packet?.event)
        continue
      }
      void emit({ event: 'message', peerId, packet, frame_sizes: [...frameSizes] })
      // keep reading meanwhile: a reset of the stream stops the backend request
      answering = answer(stream, packet, peerId, controller)
    }
  } catch (err) {
    log('chat stream from', peerId, errorMessage(err))
    controller.abort()
    if (answering == null) stream.abort(err)
  }
  if (answering != null) {
    await answering
  } else {
    await stream.close().catch(() => {})
  }
}

await node.handle(IDENTIFY_PROTOCOL, (data) => { void handleIdentify(data) }, handlerOptions)
await node.handle(CHAT_PROTOCOL, (data) => { void handleChat(data) }, handlerOptions)

// ---------------------------------------------------------------- lifecycle

await serveUntilStopped(node, {
  models: opts.models,
  backend: opts.backendUrl
}, async () => ({ circuitAddrs: await reserveOn(node, opts.reserve) }))
