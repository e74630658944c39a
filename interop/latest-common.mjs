// Shared pieces of the latest-generation JS peers (latest-node.mjs, latest-client.mjs), which behave on
// the wire like sahilpohare/mimir-llm 464ffe1 (see /work/shared/WIRE.md, second half): one protocol per
// model, `/mimir/<sanitized model>/1.0.0`, carrying one raw HTTP/1.1 exchange (no length prefix, no JSON
// envelope). The libp2p stack is the one of mimir-common.mjs (TCP, Noise, yamux, identify).

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
