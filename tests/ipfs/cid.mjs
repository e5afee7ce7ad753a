// Prints the CID IPFS gives each path (file or directory) with kubo's
// `ipfs add --cid-version=1 --raw-leaves` settings, computed by ipfs-unixfs-importer, the
// importer Helia uses. Usage: node cid.mjs PATH... ; prints one JSON object {path: cid}.
import { readdir, readFile, stat } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const options = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  wrapWithDirectory: false
}

async function * entries (root, prefix) {
  const info = await stat(root)
  if (info.isDirectory()) {
    const names = (await readdir(root)).sort()
    if (names.length === 0) yield { path: prefix }
    for (const name of names) yield * entries(join(root, name), `${prefix}/${name}`)
  } else {
    yield { path: prefix, content: await readFile(root) }
  }
}

const result = {}
for (const path of process.argv.slice(2)) {
  const name = basename(path)
  let last
  for await (const entry of importer(entries(path, name), new MemoryBlockstore(), options)) {
    if (entry.path === name) last = entry
  }
  result[path] = last.cid.toString()
}
console.log(JSON.stringify(result))
