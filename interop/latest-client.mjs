#!/usr/bin/env node
// A JS client that behaves on the wire like the LATEST MimirLLM generation's client (sahilpohare/mimir-llm
// 464ffe1; see /work/shared/WIRE.md, second half), dialing one peer statically instead of mDNS/DHT:
//
//   probe: opens `/mimir/<sanitized model>/1.0.0` and closes it at once (multistream-select succeeds
//          only for a served model; the node answers an empty request with nothing);
//   chat:  the official `openai` SDK v4 (chat.completions.create) with a custom fetch that writes one
//          plain HTTP/1.1 request on `/mimir/<model>/1.0.0` (request line, Host, the SDK's headers,
//          Connection: close, Content-Length, body), closes its write side, BUFFERS the whole answer to
//          the end of the stream and only then hands the SDK a Response: the head up to the empty line,
//          the body everything after it (Transfer-Encoding and Content-Length ignored, as the latest
//          node's body is already de-chunked under a chunked header). No streaming to the caller.
//   raw:   --raw METHOD PATH [--body TEXT]: the same tunnel, without the SDK (e.g. DELETE /api/delete).
//
// stdout: JSON lines:
//   {"event":"ready","peerId":..,"addrs":[..]}
//   {"event":"probe","model":..,"protocol":..,"served":bool,"error"?:..}        per --probe
//   {"event":"http","protocol":..,"request_bytes":n,"status":n,"reason":..,"headers":[[k,v]..],
//    "body_bytes":n,"frame_sizes":[..]}                                          per tunnel exchange
//   {"event":"chunk","index":i,"content":..,"finish_reason":..,"chunk":{..}}     per streamed chunk
//   {"event":"result","ok":bool,"text":..,"chunks":n,"finish_reason":..,"status"?:n,"body"?:..,"error"?:..,
//    and with the relay transport "relayed":bool, "limited":bool}
// exit codes: 0 done, 1 anything else (an HTTP error status from the node included), 3 model not served.
//
// Flags:
//   --peer <multiaddr>        the node to dial (with /p2p/<id>); required
//   --model <name>            the model of the chat / raw request (default llama3.2:latest)
//   --probe <name>            repeatable: probe that model's protocol (no chat unless --prompt/--messages/--raw)
//   --prompt <text>           the user message (default "Hello" when there is nothing else to do)
//   --system <text>           a system message first (none by default)
//   --messages <json>         the whole messages array
//   --no-stream               ask `stream: false` (default: stream true, decoded by the SDK from the buffer)
//   --raw <METHOD> <PATH>     send a raw request instead of the chat; --body <text> its body
//   --timeout-ms <n>          bound on dial + everything (default 60000)
//   --listen <multiaddr>      repeatable; default /ip4/127.0.0.1/tcp/0
//   --dht                     add the latest generation's two kad-dht instances (amino + LAN)
//   --bootstrap <multiaddr>   repeatable: @libp2p/bootstrap discovery of that peer (loaded only when given)
//   --no-monitor, --monitor-interval-ms <n>
//   --relay-client            the circuit relay v2 transport: --peer may be <relay addr>/p2p-circuit/p2p/<node>
//                             and the tunnel streams run on limited (relayed) connections; implied by a
//                             --peer with /p2p-circuit (as mimir-client.mjs)
import { multiaddr } from '@multiformats/multiaddr'
import OpenAI from 'openai'
import {
  DEFAULT_MODEL, RELAYED_OPTIONS, emit, isRelayed, errorMessage, log, reportUncaught, setLogTag, takeFlag, tapSizes, withTimeout
} from './mimir-common.mjs'
import { buildLatestNode, readAll, splitHttp, tunnelProtocol } from './latest-common.mjs'

setLogTag('latest-client')

function parseArgs (argv) {
  const opts = {
    peer: null,
    model: DEFAULT_MODEL,
    probes: [],
    prompt: null,
    system: null,
    messages: null,
    stream: true,
    raw: null,
    body: null,
    timeoutMs: 60_000,
    listen: [],
    dht: false,
    bootstrap: [],
    monitor: true,
    monitorIntervalMs: undefined,
    relay: false
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => takeFlag(argv, i++, a)
    if (a === '--peer') opts.peer = next()
    else if (a === '--model') opts.model = next()
    else if (a === '--probe') opts.probes.push(next())
    else if (a === '--prompt') opts.prompt = next()
    else if (a === '--system') opts.system = next()
    else if (a === '--messages') opts.messages = JSON.parse(next())
    else if (a === '--no-stream') opts.stream = false
    else if (a === '--raw') opts.raw = { method: next(), path: next() }
    else if (a === '--body') opts.body = next()
    else if (a === '--timeout-ms') opts.timeoutMs = Number(next())
    else if (a === '--listen') opts.listen.push(next())
    else if (a === '--dht') opts.dht = true
    else if (a === '--bootstrap') opts.bootstrap.push(next())
    else if (a === '--no-monitor') opts.monitor = false
    else if (a === '--monitor-interval-ms') opts.monitorIntervalMs = Number(next())
    else if (a === '--relay-client') opts.relay = true
    else throw new Error(`unknown argument ${a}`)
  }
  if (opts.peer == null) throw new Error('--peer <multiaddr> is required')
  if (opts.peer.includes('/p2p-circuit')) opts.relay = true
  if (opts.listen.length === 0) opts.listen.push('/ip4/127.0.0.1/tcp/0')
  opts.chat = opts.raw == null && (opts.prompt != null || opts.messages != null || opts.probes.length === 0)
  if (opts.messages == null) {
    opts.messages = []
    if (opts.system != null) opts.messages.push({ role: 'system', content: opts.system })
    opts.messages.push({ role: 'user', content: opts.prompt ?? 'Hello' })
  }
  return opts
}

class ExitError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}

/** Open the model's protocol and close it at once; true when the node serves it. */
async function probe (conn, model, signal) {
  const protocol = tunnelProtocol(model)
  try {
    const stream = await conn.newStream(protocol, { signal, ...streamOptions })
    await stream.close()
    await emit({ event: 'probe', model, protocol, served: true })
    return true
  } catch (err) {
    await emit({ event: 'probe', model, protocol, served: false, error: errorMessage(err) })
    return false
  }
}

const encoder = new TextEncoder()
// headers this client writes itself
const OWN_HEADERS = new Set(['host', 'connection', 'content-length'])

/**
 * One raw HTTP/1.1 exchange on the model's protocol: write the request, close the write side, read the
 * answer to the end of the stream. Returns {status, reason, headers, body}.
 */
async function exchange (conn, model, method, url, headers, body, signal) {
  const protocol = tunnelProtocol(model)
  const u = new URL(url)
  const bodyBytes = body == null ? new Uint8Array(0) : typeof body === 'string' ? encoder.encode(body) : new Uint8Array(body)
  let head = `${method} ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\n`
  for (const [k, v] of headers) {
    if (!OWN_HEADERS.has(k.toLowerCase())) head += `${k}: ${v}\r\n`
  }
  head += `Connection: close\r\nContent-Length: ${bodyBytes.byteLength}\r\n\r\n`
  const request = Buffer.concat([Buffer.from(head, 'latin1'), bodyBytes])
  const stream = await conn.newStream(protocol, { signal, ...streamOptions })
  const onAbort = () => stream.abort(new Error('request aborted'))
  signal?.addEventListener('abort', onAbort)
  const frameSizes = []
  try {
    const writing = stream.sink([request])
    const answer = await readAll(tapSizes(stream.source, frameSizes))
    await writing
    const parts = splitHttp(answer)
    if (parts == null) throw new Error(`the node answered ${answer.length} bytes without an HTTP head`)
    const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(parts.startLine)
    if (m == null) throw new Error(`bad status line ${JSON.stringify(parts.startLine)}`)
    const out = { status: Number(m[1]), reason: m[2], headers: parts.headers, body: parts.body }
    await emit({ event: 'http', protocol, request_bytes: request.length, status: out.status, reason: out.reason, headers: out.headers, body_bytes: out.body.length, frame_sizes: frameSizes })
    await stream.close().catch(() => {})
    return out
  } catch (err) {
    stream.abort(err)
    throw err
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

/** A fetch for the openai SDK that goes through the tunnel and buffers the whole answer. */
function tunnelFetch (conn, model) {
  return async (url, init = {}) => {
    const headers = init.headers instanceof Headers ? [...init.headers] : Object.entries(init.headers ?? {})
    const res = await exchange(conn, model, (init.method ?? 'GET').toUpperCase(), String(url), headers, init.body ?? null, init.signal ?? undefined)
    const nullBody = [101, 204, 205, 304].includes(res.status)
    return new Response(nullBody ? null : res.body, {
      status: res.status,
      statusText: res.reason,
      headers: res.headers.filter(([k]) => !['transfer-encoding', 'content-length', 'content-encoding'].includes(k.toLowerCase()))
    })
  }
}

async function chat (conn, signal) {
  const openai = new OpenAI({
    baseURL: 'http://mimir.local/v1',
    apiKey: 'mimir',
    maxRetries: 0,
    timeout: opts.timeoutMs,
    fetch: tunnelFetch(conn, opts.model)
  })
  const out = { text: '', chunks: 0, finish_reason: null }
  if (!opts.stream) {
    const completion = await openai.chat.completions.create({ model: opts.model, messages: opts.messages, stream: false }, { signal })
    out.text = completion.choices?.[0]?.message?.content ?? ''
    out.finish_reason = completion.choices?.[0]?.finish_reason ?? null
    out.completion = completion
    return out
  }
  const completion = await openai.chat.completions.create({ model: opts.model, messages: opts.messages, stream: true }, { signal })
  for await (const chunk of completion) {
    const choice = chunk.choices?.[0]
    const content = typeof choice?.delta?.content === 'string' ? choice.delta.content : null
    const reason = choice?.finish_reason ?? null
    await emit({ event: 'chunk', index: out.chunks, content, finish_reason: reason, chunk })
    out.chunks++
    if (content != null) out.text += content
    if (reason != null && out.finish_reason == null) out.finish_reason = reason
  }
  return out
}

/** True when err (or an error it wraps, as the SDK does) says the node does not serve the protocol. */
function notServed (err) {
  for (let e = err, i = 0; e != null && i < 5; e = e.cause, i++) {
    if (e.name === 'UnsupportedProtocolError') return true
  }
  return false
}

const opts = parseArgs(process.argv.slice(2))
const streamOptions = opts.relay ? RELAYED_OPTIONS : {}
reportUncaught()
const node = await buildLatestNode({ listen: opts.listen, dht: opts.dht, bootstrap: opts.bootstrap, monitor: opts.monitor, monitorIntervalMs: opts.monitorIntervalMs, relay: opts.relay })
await node.start()
await emit({ event: 'ready', peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map(ma => ma.toString()) })

let code = 0
const result = { event: 'result', ok: false, text: '', chunks: 0, finish_reason: null }
const signal = AbortSignal.timeout(opts.timeoutMs)
try {
  const conn = await node.dial(multiaddr(opts.peer), { signal })
  result.peerId = conn.remotePeer.toString()
  if (opts.relay) Object.assign(result, { relayed: isRelayed(conn.remoteAddr), limited: conn.limits != null })
  if (opts.probes.length > 0) {
    result.probes = {}
    for (const model of opts.probes) result.probes[model] = await probe(conn, model, signal)
  }
  if (opts.raw != null) {
    const res = await exchange(conn, opts.model, opts.raw.method, `http://mimir.local${opts.raw.path}`, opts.body != null ? [['Content-Type', 'application/json']] : [], opts.body, signal)
    Object.assign(result, { status: res.status, reason: res.reason, headers: res.headers, body: res.body.toString('utf8') })
  } else if (opts.chat) {
    Object.assign(result, await chat(conn, signal))
  }
  result.ok = true
} catch (err) {
  code = err instanceof ExitError ? err.code : notServed(err) ? 3 : 1
  if (err?.status != null) result.status = err.status
  result.error = errorMessage(err)
  log(result.error)
}
await emit(result)
try {
  await withTimeout(node.stop(), 5000, 'libp2p stop')
} catch (err) {
  log('stop failed', err)
}
process.exit(code)
