#!/usr/bin/env node
// Encodes the AutoNAT v1 and DCUtR messages the unit tests pin, with the JS packages' own protobuf
// encoders (@libp2p/autonat 2.0.16 dist/src/pb/index.js, @libp2p/dcutr 2.0.15 dist/src/pb/message.js),
// and prints them as one JSON object {name: hex body} (no length prefix).
//
// Regenerate: cd interop && node nat-encode.mjs
// then copy the hex strings into tests/protocols/autonat/test_messages.py (JS_AUTONAT) and
// tests/protocols/dcutr/test_messages.py (JS_DCUTR). The messages are shaped as the packages send them:
// autonat.js's DIAL request and its DIAL_RESPONSE answers, dcutr.js's CONNECT and SYNC.
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { Message } from './node_modules/@libp2p/autonat/dist/src/pb/index.js'
import { HolePunch } from './node_modules/@libp2p/dcutr/dist/src/pb/message.js'

const JS1 = peerIdFromString('12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp') // kad-peer --key-seed 1
const ma = (s) => multiaddr(s).bytes
const hex = (u8) => Buffer.from(u8).toString('hex')

const autonat = {
  // autonat.js askPeerToVerify: one address, no /p2p
  'DIAL one address': {
    type: Message.MessageType.DIAL,
    dial: { peer: { id: JS1.toMultihash().bytes, addrs: [ma('/ip4/81.2.69.142/tcp/4001')] } }
  },
  'DIAL three addresses': {
    type: Message.MessageType.DIAL,
    dial: {
      peer: {
        id: JS1.toMultihash().bytes,
        addrs: [
          ma('/ip4/81.2.69.142/tcp/4001'),
          ma('/ip6/2a00:1450::7/tcp/4001'),
          ma(`/ip4/81.2.69.142/tcp/4002/p2p/${JS1}`)
        ]
      }
    }
  },
  'DIAL_RESPONSE OK': {
    type: Message.MessageType.DIAL_RESPONSE,
    dialResponse: { status: Message.ResponseStatus.OK, addr: ma('/ip4/81.2.69.142/tcp/4001') }
  },
  'DIAL_RESPONSE E_DIAL_ERROR': {
    type: Message.MessageType.DIAL_RESPONSE,
    dialResponse: {
      status: Message.ResponseStatus.E_DIAL_ERROR,
      statusText: 'The operation was aborted due to timeout',
      addr: ma(`/ip4/81.2.69.142/tcp/4001/p2p/${JS1}`)
    }
  },
  'DIAL_RESPONSE E_DIAL_ERROR empty text': {
    type: Message.MessageType.DIAL_RESPONSE,
    dialResponse: {
      status: Message.ResponseStatus.E_DIAL_ERROR,
      statusText: '',
      addr: ma('/ip4/81.2.69.142/tcp/4001')
    }
  },
  'DIAL_RESPONSE E_DIAL_REFUSED': {
    type: Message.MessageType.DIAL_RESPONSE,
    dialResponse: { status: Message.ResponseStatus.E_DIAL_REFUSED, statusText: 'no dialable addresses' }
  },
  'DIAL_RESPONSE E_BAD_REQUEST': {
    type: Message.MessageType.DIAL_RESPONSE,
    dialResponse: {
      status: Message.ResponseStatus.E_BAD_REQUEST,
      statusText: 'No Dial message found in message'
    }
  },
  'DIAL_RESPONSE E_INTERNAL_ERROR': {
    type: Message.MessageType.DIAL_RESPONSE,
    dialResponse: { status: Message.ResponseStatus.E_INTERNAL_ERROR, statusText: 'übel' }
  }
}

const dcutr = {
  // dcutr.js: CONNECT carries the address manager's addresses, SYNC an empty list
  'CONNECT': {
    type: HolePunch.Type.CONNECT,
    observedAddresses: [ma('/ip4/93.184.216.34/tcp/4001'), ma('/ip6/2606:4700::1111/tcp/4001')]
  },
  'CONNECT with relay and private addresses': {
    type: HolePunch.Type.CONNECT,
    observedAddresses: [
      ma('/ip4/93.184.216.34/tcp/4001'),
      ma(`/ip4/192.0.2.1/tcp/4001/p2p/${JS1}/p2p-circuit`),
      ma('/ip4/192.168.1.9/tcp/4001'),
      ma('/ip4/127.0.0.1/tcp/4001')
    ]
  },
  'SYNC': { type: HolePunch.Type.SYNC, observedAddresses: [] }
}

const out = { autonat: {}, dcutr: {} }
for (const [name, msg] of Object.entries(autonat)) out.autonat[name] = hex(Message.encode(msg))
for (const [name, msg] of Object.entries(dcutr)) out.dcutr[name] = hex(HolePunch.encode(msg))
console.log(JSON.stringify(out, null, 2))
