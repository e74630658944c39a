#!/usr/bin/env node
// A JS node that behaves on the wire like the LATEST MimirLLM generation (sahilpohare/mimir-llm 464ffe1;
// see /work/shared/WIRE.md, second half), defects included, so that tests can pair mimirlite with it:
//
//   - at start it asks its Ollama-like backend `GET <backend>/api/tags` and registers one protocol per
//     model, `/mimir/<sanitized name>/1.0.0` (names from models[].name; --model replaces that list);
//     no /mimirllm/1.0.0*;
//   - on such a stream it reads the request to the end of the stream (the client closes its write side);
//     an empty request is a probe and is answered with nothing;
//   - otherwise it forwards the request (ANY method and path: the defect, e.g. DELETE /api/delete reaches
//     the backend) to <backend><path> with fetch, and writes back `HTTP/1.1 <status> <reason>`, the
//     backend's headers copied as fetch reports them (so a body fetch has de-chunked still goes under
//     `transfer-encoding: chunked`), an empty line, the body bytes as they arrive, then closes.
//   - a request without an empty line after its head, or a backend fetch that fails, resets the stream.
// Two served names that sanitize to the same protocol ID: the first wins (the other is logged).
//
// stdout: JSON lines: one "ready" event ({peerId, addrs, models, protocols, backend, circuitAddrs}), then
//   events: connection:open / connection:close ({peerId, remoteAddr, relayed, limited}; direction on open),
//   reserve-failed ({addr, error}),
//   probe    {peerId, protocol}
//   request  {peerId, protocol, method, path, headers, body_bytes, frame_sizes}
//   response {peerId, protocol, ok, status, headers, body_bytes, error?}
//   uncaught.
// stderr: diagnostics.  stdin: EOF or a line "exit" stops the node.
//
// Flags:
//   --listen <multiaddr>        repeatable; default /ip4/127.0.0.1/tcp/0
//   --backend-url <url>         the Ollama root (e.g. http://127.0.0.1:11434; a trailing /v1 is dropped);
//                               default $OLLAMA_ENDPOINT; required
//   --model <name>              repeatable: serve these instead of asking /api/tags
//   --tags-timeout-ms <n>       bound on the /api/tags request at start (default 10000)
//   --dht                       add the latest generation's two kad-dht instances (amino + LAN); no
//                               provide() of model CIDs yet
//   --bootstrap <multiaddr>     repeatable: @libp2p/bootstrap discovery of that peer (the original lists the
//                               public IPFS bootstrap peers; the module is loaded only when given)
//   --max-streams <n>           inbound/outbound stream limits of the tunnel handlers (libp2p defaults)
//   --no-monitor, --monitor-interval-ms <n>
//   --mdns, --mdns-interval-ms <n>   @libp2p/mdns discovery (only inside network namespaces in tests)
//   --reserve <multiaddr>       repeatable: reserve a slot on that circuit relay v2 (ADDR ends in /p2p/<relay>)
//                               before "ready" (listen on ADDR/p2p-circuit); the tunnel handlers then also run
//                               on limited (relayed) connections. As mimir-node.mjs --reserve.
import {
  RELAYED_OPTIONS, connectionFields, emit, errorMessage, log, reportUncaught, reserveOn, serveUntilStopped,
  setLogTag, takeFlag, tapSizes
} from './mimir-common.mjs'
import { buildLatestNode, readAll, splitHttp, tunnelProtocol } from './latest-common.mjs'

setLogTag('latest-node')

function parseArgs (argv) {
  const opts = {
    listen: [],
    backendUrl: process.env.OLLAMA_ENDPOINT,
    models: [],
    tagsTimeoutMs: 10_000,
    dht: false,
    bootstrap: [],
    maxStreams: undefined,
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
    else if (a === '--tags-timeout-ms') opts.tagsTimeoutMs = Number(next())
    else if (a === '--dht') opts.dht = true
    else if (a === '--bootstrap') opts.bootstrap.push(next())
    else if (a === '--max-streams') opts.maxStreams = Number(next())
    else if (a === '--no-monitor') opts.monitor = false
    else if (a === '--monitor-interval-ms') opts.monitorIntervalMs = Number(next())
    else if (a === '--mdns') opts.mdns = true
    else if (a === '--mdns-interval-ms') opts.mdnsIntervalMs = Number(next())
    else if (a === '--reserve') opts.reserve.push(next())
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  if (opts.backendUrl == null || opts.backendUrl === '') throw new Error('no backend: pass --backend-url or set OLLAMA_ENDPOINT')
  opts.backendUrl = opts.backendUrl.replace(/\/+$/, '').replace(/\/v1$/, '')
  return opts
}

const opts = parseArgs(process.argv.slice(2))
reportUncaught()

/** The model names of the backend's GET /api/tags (Ollama's shape: {"models": [{"name": ..}, ..]}). */
async function backendModels () {
  const res = await fetch(`${opts.backendUrl}/api/tags`, { signal: AbortSignal.timeout(opts.tagsTimeoutMs) })
  if (!res.ok) throw new Error(`GET /api/tags answered ${res.status}`)
  const tags = await res.json()
  if (!Array.isArray(tags?.models)) throw new Error('GET /api/tags: no models list')
  return tags.models.map(m => m?.name).filter(n => typeof n === 'string' && n !== '')
}

const models = opts.models.length > 0 ? opts.models : await backendModels()

const node = await buildLatestNode({
  listen: opts.listen,
  dht: opts.dht,
  bootstrap: opts.bootstrap,
  monitor: opts.monitor,
  monitorIntervalMs: opts.monitorIntervalMs,
  mdns: opts.mdns,
  mdnsIntervalMs: opts.mdnsIntervalMs,
  relay: opts.reserve.length > 0
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

// ---------------------------------------------------------------- /mimir/<model>/1.0.0

// request headers fetch sets itself (or refuses): not forwarded
const NOT_FORWARDED = new Set(['host', 'connection', 'content-length', 'transfer-encoding', 'keep-alive', 'upgrade', 'expect', 'te', 'trailer'])
const encoder = new TextEncoder()

async function handleTunnel (protocol, { stream, connection }) {
  const peerId = connection.remotePeer.toString()
  const frameSizes = []
  let request
  try {
    request = await readAll(tapSizes(stream.source, frameSizes))
  } catch (err) {
    log('tunnel stream from', peerId, errorMessage(err))
    stream.abort(err)
    return
  }
  if (request.length === 0) {
    // a probe: answer nothing
    await emit({ event: 'probe', peerId, protocol })
    await stream.close().catch(() => {})
    return
  }
  const parts = splitHttp(request)
  const [method, path] = parts?.startLine.split(' ') ?? []
  if (parts == null || method == null || path == null || !path.startsWith('/')) {
    log('tunnel request from', peerId, 'is not HTTP')
    await emit({ event: 'request', peerId, protocol, method: null, path: null, headers: [], body_bytes: request.length, frame_sizes: frameSizes })
    stream.abort(new Error('not an HTTP request'))
    return
  }
  await emit({ event: 'request', peerId, protocol, method, path, headers: parts.headers, body_bytes: parts.body.length, frame_sizes: frameSizes })
  const headers = parts.headers.filter(([k]) => !NOT_FORWARDED.has(k.toLowerCase()))
  const controller = new AbortController()
  const stats = { status: null, headers: null, body_bytes: 0 }
  try {
    const res = await fetch(`${opts.backendUrl}${path}`, {
      method,
      headers,
      body: method === 'GET' || method === 'HEAD' ? undefined : parts.body,
      signal: controller.signal
    })
    stats.status = res.status
    stats.headers = [...res.headers]
    async function * answer () {
      let head = `HTTP/1.1 ${res.status} ${res.statusText}\r\n`
      for (const [k, v] of res.headers) head += `${k}: ${v}\r\n`
      yield encoder.encode(head + '\r\n')
      if (res.body == null) return
      for await (const chunk of res.body) {
        stats.body_bytes += chunk.byteLength
        yield chunk
      }
    }
    await stream.sink(answer())
    await stream.close().catch(() => {})
    await emit({ event: 'response', peerId, protocol, ok: true, ...stats })
  } catch (err) {
    controller.abort()
    log('tunnel answer to', peerId, errorMessage(err))
    stream.abort(err)
    await emit({ event: 'response', peerId, protocol, ok: false, ...stats, error: errorMessage(err) })
  }
}

const protocols = []
const served = new Map() // protocol -> model
for (const model of models) {
  const protocol = tunnelProtocol(model)
  if (served.has(protocol)) {
    log(`model ${model} not served: ${protocol} is already ${served.get(protocol)}'s`)
    continue
  }
  served.set(protocol, model)
  protocols.push(protocol)
  await node.handle(protocol, (data) => { void handleTunnel(protocol, data) }, handlerOptions)
}

// ---------------------------------------------------------------- lifecycle

await serveUntilStopped(node, {
  models,
  protocols,
  backend: opts.backendUrl
}, async () => ({ circuitAddrs: await reserveOn(node, opts.reserve) }))
