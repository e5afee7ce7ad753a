// Prints the CID IPFS gives each path (file or directory) with kubo's
// `ipfs add --cid-version=1 --raw-leaves` settings, computed by ipfs-unixfs-importer, the
// importer Helia uses. Usage: node cid.mjs PATH... ; prints one JSON object {path: cid}.
import { basename } from 'node:path'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { entries, importOptions as options } from './layout.mjs'

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
