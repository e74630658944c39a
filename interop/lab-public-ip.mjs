// @libp2p/utils/private-ip as the NAT lab sees it (lab-public-hook.mjs puts it in the real one's place):
// IPv4 addresses in the --lab-public CIDRs are public, everything else is what the real isPrivateIp says.
import { isPrivateIp as realIsPrivateIp } from '@libp2p/utils/private-ip'

const LAB_PUBLIC = Symbol.for('mimirlite.labPublic')

function ipv4 (text) {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text)
  if (m == null) return undefined
  const octets = m.slice(1).map(Number)
  if (octets.some(o => o > 255)) return undefined
  return ((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]) >>> 0
}

const RANGES = (globalThis[LAB_PUBLIC] ?? []).map(cidr => {
  const [addr, bits] = cidr.split('/')
  const n = Number(bits)
  const base = ipv4(addr)
  if (base == null || n > 32) throw new Error(`bad --lab-public CIDR ${cidr}`)
  const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0
  return { base: (base & mask) >>> 0, mask }
})

/** The CIDRs in effect (for nat-peer.mjs's labPublic command). */
export const labPublicCidrs = Object.freeze([...(globalThis[LAB_PUBLIC] ?? [])])

export function isPrivateIp (ip) {
  const v = ipv4(ip)
  if (v != null && RANGES.some(r => ((v & r.mask) >>> 0) === r.base)) return false
  return realIsPrivateIp(ip)
}
