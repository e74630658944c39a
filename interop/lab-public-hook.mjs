// The NAT lab's stand-in for the public internet, for nat-peer.mjs (issue 15).
//
// js-libp2p's DCUtR, AutoNAT, identify and address manager skip "private" addresses
// (@libp2p/utils/private-ip isPrivateIp), and mimirlite's tests may only use private ranges (loopback, or
// 10.x / 192.168.x inside network namespaces). Loaded first:
//
//   node --import ./lab-public-hook.mjs nat-peer.mjs --lab-public 10.77.3.0/24 ...
//
// this module registers a resolve hook that hands every importer of @libp2p/utils's private-ip.js (the
// packages by specifier, is-private.js by relative path: one module) lab-public-ip.mjs instead, which says
// "not private" for the IPv4 CIDRs given with --lab-public (repeatable) and defers to the real function
// otherwise. Without --lab-public it registers nothing. jsnat.py (JsNatPeer lab_public=) passes it through
// NODE_OPTIONS.
import { register } from 'node:module'
import { isMainThread } from 'node:worker_threads'

const REAL = '/@libp2p/utils/dist/src/private-ip.js'
const SHIM = new URL('./lab-public-ip.mjs', import.meta.url).href
export const LAB_PUBLIC = Symbol.for('mimirlite.labPublic')

/** The resolve hook (runs on node's hooks thread). */
export async function resolve (specifier, context, nextResolve) {
  const resolved = await nextResolve(specifier, context)
  if (resolved.url.endsWith(REAL) && context.parentURL !== SHIM) {
    return { ...resolved, url: SHIM, shortCircuit: true }
  }
  return resolved
}

/** The --lab-public CIDRs of argv (validated: IPv4 a.b.c.d/n). */
export function labPublicArgs (argv) {
  const out = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] !== '--lab-public') continue
    const cidr = argv[i + 1]
    if (cidr == null || !/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.test(cidr)) {
      throw new Error(`--lab-public needs an IPv4 CIDR (a.b.c.d/n), not ${cidr}`)
    }
    out.push(cidr)
  }
  return out
}

if (isMainThread) {
  const cidrs = labPublicArgs(process.argv.slice(2))
  if (cidrs.length > 0) {
    globalThis[LAB_PUBLIC] = Object.freeze(cidrs)
    register(import.meta.url)
  }
}
