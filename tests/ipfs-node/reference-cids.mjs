#!/usr/bin/env node
// Independent reference for the Rust `fl_ipfs::cid` tests: imports the same deterministic
// bytes with js-ipfs' own importer (ipfs-unixfs-importer 12, @ipld/dag-pb, multiformats),
// with the parameters of `ipfs add --cid-version=1 --raw-leaves --chunker=size-N`, and
// prints each CID. The expected values in ipfs/src/cid.rs were produced by this script.
//
// usage: node reference-cids.mjs
import { importer } from 'ipfs-unixfs-importer'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { CID } from 'multiformats/cid'

// xorshift64*, top byte; the same generator as `pattern` in ipfs/src/cid.rs.
function pattern (len, seed) {
  const mask = (1n << 64n) - 1n
  let state = BigInt(seed) | 1n
  const out = new Uint8Array(len)
  for (let i = 0; i < len; i++) {
    state ^= state >> 12n
    state ^= (state << 25n) & mask
    state ^= state >> 27n
    out[i] = Number(((state * 0x2545f4914f6cdd1dn) & mask) >> 56n)
  }
  return out
}

async function cidOf (bytes, chunkSize, maxLinks) {
  const options = { cidVersion: 1, rawLeaves: true, maxChunkSize: chunkSize, maxChildrenPerNode: maxLinks, strategy: 'balanced' }
  let last
  for await (const entry of importer([{ content: bytes }], new MemoryBlockstore(), options)) last = entry
  return last.cid.toV1().toString()
}

const cases = [
  // [name, length, seed, chunk size, links per node]
  ['one byte', 1, 1, 262144, 174],
  ['one chunk exactly', 262144, 2, 262144, 174],
  ['one chunk and one byte', 262145, 3, 262144, 174],
  ['model-sized file, 2,479,144 bytes', 2479144, 4, 262144, 174],
  ['two levels: 175 leaves of 16 bytes', 175 * 16, 5, 16, 174],
  ['one full node: 174 leaves of 16 bytes', 174 * 16, 6, 16, 174],
  ['three levels: 174*174+1 leaves of 4 bytes', (174 * 174 + 1) * 4 - 3, 7, 4, 174],
  ['three levels, small fan-out: 3 links, 10 leaves', 10 * 8, 8, 8, 3],
  ['four levels, small fan-out: 3 links, 28 leaves, last short', 27 * 8 + 5, 9, 8, 3]
]
for (const [name, len, seed, chunk, links] of cases) {
  console.log(`${JSON.stringify(name)} len=${len} seed=${seed} chunk=${chunk} links=${links} ${await cidOf(pattern(len, seed), chunk, links)}`)
}
console.log(`v0 QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR -> ${CID.parse('QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR').toV1().toString()}`)
