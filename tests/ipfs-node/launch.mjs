#!/usr/bin/env node
// The project's development IPFS node: js-ipfs 0.66.1 (ipfs-core 0.18.1) serving the Kubo
// RPC API (/api/v0/...) on 127.0.0.1, in a private network, with every feature that could
// reach beyond loopback switched off. Production boards run Kubo instead (agent/ipfs/README.md).
//
// usage:
//   node launch.mjs --swarm-key FILE --repo DIR [--api-port N] [--swarm-port M] [--peer MADDR]...
//   node launch.mjs --swarm-key FILE --nodes N --dir DIR [--api-port N] [--swarm-port M] [--peer MADDR]...
//   node launch.mjs --new-swarm-key FILE
//
//   --swarm-key FILE   Kubo-format swarm key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits);
//                      required: nodes without the same key cannot connect.
//   --repo DIR         repository of the single node (created when missing).
//   --nodes N --dir D  N nodes in one private network, repositories D/node-0 .. D/node-(N-1);
//                      each dials every earlier one.
//   --api-port N       API port of node 0 (node i gets N+i); 0 (the default) lets the OS pick.
//   --swarm-port M     swarm port of node 0 (node i gets M+i); 0 (the default) lets the OS pick.
//   --peer MADDR       a loopback peer (/ip4/127.0.0.1/tcp/P/p2p/ID) every node keeps dialling.
//   --new-swarm-key F  writes a fresh random swarm key to F (mode 0600, never overwrites) and exits.
//
// On stdout, for every node i: `node i peer ID`, `node i api URL`, `node i swarm MADDR`,
// then one `Daemon is ready` once all nodes serve their API. Logs go to stderr.
// SIGTERM or SIGINT stops every node cleanly (SIGKILL leaves repo.lock behind).

// libp2p refuses to start without a connection protector when this is set: a second guard,
// besides the explicit check below, against ever running outside a private network.
process.env.LIBP2P_FORCE_PNET = '1'

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Daemon } from 'ipfs-daemon'
import { createLibp2p } from 'libp2p'
import { preSharedKey } from 'libp2p/pnet'
import { tcp } from '@libp2p/tcp'

const USAGE = 'usage: launch.mjs --swarm-key FILE (--repo DIR | --nodes N --dir DIR) [--api-port N] [--swarm-port M] [--peer MADDR]... | --new-swarm-key FILE'

function fail (message) {
  console.error(`launch.mjs: ${message}`)
  process.exit(2)
}

function parseArgs (argv) {
  const opts = { peers: [], apiPort: 0, swarmPort: 0 }
  const value = (i, name) => {
    if (i + 1 >= argv.length) fail(`${name} needs a value\n${USAGE}`)
    return argv[i + 1]
  }
  const port = (text, name) => {
    const n = Number(text)
    if (!Number.isInteger(n) || n < 0 || n > 65535) fail(`${name}: expected a port number, got ${JSON.stringify(text)}`)
    return n
  }
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i]
    switch (name) {
      case '--swarm-key': opts.swarmKey = value(i, name); break
      case '--repo': opts.repo = value(i, name); break
      case '--nodes': {
        const n = Number(value(i, name))
        if (!Number.isInteger(n) || n < 1 || n > 64) fail(`--nodes: expected 1 to 64, got ${JSON.stringify(argv[i + 1])}`)
        opts.nodes = n
        break
      }
      case '--dir': opts.dir = value(i, name); break
      case '--api-port': opts.apiPort = port(value(i, name), name); break
      case '--swarm-port': opts.swarmPort = port(value(i, name), name); break
      case '--peer': opts.peers.push(value(i, name)); break
      case '--new-swarm-key': opts.newSwarmKey = value(i, name); break
      case '--help': case '-h': console.log(USAGE); process.exit(0); break
      default: fail(`unknown argument ${JSON.stringify(name)}\n${USAGE}`)
    }
  }
  return opts
}

// Kubo's swarm.key format (go-libp2p pnet v1): three lines, the last 32 random bytes in hex.
function newSwarmKey (file) {
  const text = `/key/swarm/psk/1.0.0/\n/base16/\n${crypto.randomBytes(32).toString('hex')}\n`
  try {
    // 'wx': never overwrite, so an existing network's key cannot be lost by accident.
    fs.writeFileSync(file, text, { flag: 'wx', mode: 0o600 })
  } catch (e) {
    fail(`writing swarm key ${file}: ${e.code === 'EEXIST' ? 'file exists' : e.message}`)
  }
}

function readSwarmKey (file) {
  let text
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    fail(`reading swarm key ${file}: ${e.message}`)
  }
  const lines = text.split(/\r?\n/)
  if (lines[0] !== '/key/swarm/psk/1.0.0/' || lines[1] !== '/base16/' || !/^[0-9a-fA-F]{64}$/.test(lines[2] ?? '') ||
      lines.slice(3).some(l => l.trim() !== '')) {
    fail(`reading swarm key ${file}: expected Kubo's format (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits on three lines)`)
  }
  return Buffer.from(text, 'utf8')
}

// Only loopback addresses may ever be dialled or listened on.
function isLoopback (maddr) {
  const s = maddr.toString()
  return /^\/ip4\/127\.\d+\.\d+\.\d+\/tcp\/\d+(\/|$)/.test(s) || /^\/ip6\/::1\/tcp\/\d+(\/|$)/.test(s)
}

// Everything in the repo config that could reach beyond 127.0.0.1 is switched off here.
function ipfsConfig (apiPort, swarmPort) {
  return {
    Addresses: {
      Swarm: [`/ip4/127.0.0.1/tcp/${swarmPort}`],
      API: `/ip4/127.0.0.1/tcp/${apiPort}`,
      Gateway: '', // no HTTP gateway
      RPC: '', // no gRPC-websocket server (its fixed default port would collide between nodes)
      Delegates: [], // no delegated routing through *.delegate.ipfs.io
      Announce: [],
      NoAnnounce: []
    },
    Bootstrap: [], // no public bootstrap peers
    Discovery: {
      MDNS: { Enabled: false, Interval: 10 },
      webRTCStar: { Enabled: false }
    },
    Swarm: { DisableNatPortMap: true, ConnMgr: { LowWater: 50, HighWater: 200 } }, // no UPnP
    Routing: { Type: 'none' }, // no DHT
    Pubsub: { Enabled: false }
  }
}

// ipfs-core builds the libp2p options from the config above; this factory then overrides
// whatever could still leave loopback, whatever ipfs-core's defaults are: no peer discovery
// at all (its MDNS filter is marked "TODO: fixme" upstream), TCP only, no NAT mapping, no
// circuit relay, no DHT or pubsub, no DNS resolution of /dnsaddr, no periodic peer-routing
// refresh, and a connection gater that refuses to dial anything but loopback.
function libp2pFactory (psk) {
  return async ({ libp2pOptions }) => {
    const options = {
      ...libp2pOptions,
      addresses: { ...libp2pOptions.addresses, announce: [], noAnnounce: [] },
      transports: [tcp()],
      peerDiscovery: [],
      contentRouters: [],
      peerRouters: [],
      dht: undefined,
      pubsub: undefined,
      nat: { enabled: false },
      relay: { enabled: false, hop: { enabled: false, active: false }, autoRelay: { enabled: false }, advertise: { enabled: false } },
      peerRouting: { refreshManager: { enabled: false } },
      connectionManager: { ...libp2pOptions.connectionManager, resolvers: {} },
      connectionGater: {
        denyDialMultiaddr: async (_peerId, maddr) => !isLoopback(maddr)
      },
      connectionProtector: preSharedKey({ psk })
    }
    for (const a of options.addresses.listen) {
      if (!isLoopback(a)) throw new Error(`refusing to listen on non-loopback address ${a}`)
    }
    return createLibp2p(options)
  }
}

async function startNode (repo, apiPort, swarmPort, psk) {
  const daemon = new Daemon({
    repo,
    init: { algorithm: 'Ed25519', profiles: ['test'] }, // used only when the repo does not exist yet
    config: ipfsConfig(apiPort, swarmPort), // merged into the repo config on every start
    preload: { enabled: false }, // no HTTP preload to *.preload.ipfs.io
    start: true,
    silent: true,
    libp2p: libp2pFactory(psk)
  })
  await daemon.start()
  const id = await daemon._ipfs.id()
  const peerId = id.id.toString()
  const swarm = id.addresses.map(a => a.toString()).filter(a => a.startsWith('/ip4/127.0.0.1/tcp/'))
  if (swarm.length === 0) throw new Error(`node in ${repo} has no loopback swarm address (${id.addresses.join(', ')})`)
  const server = daemon._httpApi?._apiServers?.[0]
  if (!server) throw new Error(`node in ${repo} serves no HTTP API`)
  const apiUrl = `http://127.0.0.1:${server.info.port}`
  return { daemon, repo, peerId, apiUrl, swarm: swarm[0].includes('/p2p/') ? swarm[0] : `${swarm[0]}/p2p/${peerId}` }
}

const opts = parseArgs(process.argv.slice(2))

if (opts.newSwarmKey) {
  newSwarmKey(opts.newSwarmKey)
  console.error(`launch.mjs: wrote a new swarm key to ${opts.newSwarmKey}`)
  process.exit(0)
}

if (!opts.swarmKey) fail(`--swarm-key FILE is required: the node only runs in a private network (create one with --new-swarm-key FILE)\n${USAGE}`)
if ((opts.repo == null) === (opts.nodes == null)) fail(`give either --repo DIR or --nodes N --dir DIR\n${USAGE}`)
if (opts.nodes != null && opts.dir == null) fail(`--nodes needs --dir DIR\n${USAGE}`)
for (const p of opts.peers) {
  if (!isLoopback(p) || !p.includes('/p2p/')) fail(`--peer ${p}: expected a loopback address with a peer id, like /ip4/127.0.0.1/tcp/4001/p2p/12D3...`)
}
const psk = readSwarmKey(opts.swarmKey)
const repos = opts.repo != null ? [opts.repo] : Array.from({ length: opts.nodes }, (_, i) => path.join(opts.dir, `node-${i}`))
const portOf = (base, i) => (base === 0 ? 0 : base + i)

const nodes = []
let stopping = false
async function stop (code) {
  if (stopping) return
  stopping = true
  for (const n of nodes) {
    try { await n.daemon.stop() } catch (e) { console.error(`launch.mjs: stopping node in ${n.repo}: ${e.message}`) }
  }
  process.exit(code)
}
// js-ipfs 0.66 rejects a promise nobody awaits when a `cat` client disconnects while
// bitswap still fetches blocks from a peer ("Want for CID aborted"), and Node ends the
// process on an unhandled rejection: a killed aggregator took its node down with it (seen
// in the kill test under load, reproduced with an aborted curl). A client going away must
// not stop the node: such rejections are logged; any other still stops it.
process.on('unhandledRejection', (err) => {
  const message = String((err && err.message) || err)
  if (/aborted/i.test(message)) {
    console.error(`launch.mjs: a request ended by its client: ${message} (the node keeps serving)`)
    return
  }
  console.error('launch.mjs: unhandled rejection, stopping:', err)
  process.exit(1)
})
process.on('SIGINT', () => stop(0))
process.on('SIGTERM', () => stop(0))

try {
  for (let i = 0; i < repos.length; i++) {
    if (portOf(opts.apiPort, i) > 65535 || portOf(opts.swarmPort, i) > 65535) throw new Error(`node ${i}: port out of range`)
    const node = await startNode(repos[i], portOf(opts.apiPort, i), portOf(opts.swarmPort, i), psk)
    nodes.push(node)
    console.log(`node ${i} peer ${node.peerId}`)
    console.log(`node ${i} api ${node.apiUrl}`)
    console.log(`node ${i} swarm ${node.swarm}`)
  }
} catch (e) {
  console.error(`launch.mjs: starting node ${nodes.length} (repo ${repos[nodes.length]}): ${e.message}`)
  await stop(1)
}

// There is no discovery, so peering is explicit: every node dials every earlier node and
// each --peer, and keeps re-dialling them so a restarted peer is found again.
const { multiaddr } = await import('@multiformats/multiaddr')
const targets = (i) => [...nodes.slice(0, i).map(n => n.swarm), ...opts.peers]
async function dialAll (quiet) {
  await Promise.all(nodes.map(async (n, i) => {
    for (const t of targets(i)) {
      try {
        await n.daemon._ipfs.swarm.connect(multiaddr(t), { timeout: 5000 })
      } catch (e) {
        if (!quiet) console.error(`launch.mjs: node ${i} could not dial ${t}: ${e.message}`)
      }
    }
  }))
}
await dialAll(false)
console.log('Daemon is ready')
setInterval(() => { if (!stopping) dialAll(true) }, 10000)
