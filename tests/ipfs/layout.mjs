// kubo's `ipfs add --cid-version=1 --raw-leaves` layout, for ipfs-unixfs-importer (and
// Helia's addAll, which uses it): 256 KiB chunks, balanced DAGs of at most 174 links, raw
// leaves, a one-chunk file as its raw block. Shared by cid.mjs and helia.mjs.
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

export const importOptions = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  wrapWithDirectory: false
}

// The import candidates of a file or directory tree, named below `prefix`, sorted.
export async function * entries (root, prefix) {
  const info = await stat(root)
  if (info.isDirectory()) {
    const names = (await readdir(root)).sort()
    if (names.length === 0) yield { path: prefix }
    for (const name of names) yield * entries(join(root, name), `${prefix}/${name}`)
  } else {
    yield { path: prefix, content: await readFile(root) }
  }
}
