// A real Helia IPFS node for Shoal's tests, reachable over plain HTTP on 127.0.0.1.
//
// Usage: node helia.mjs [UPSTREAM_GATEWAY_URL]
// Prints `listening PORT` once it serves:
//   POST /add?path=ABSOLUTE_PATH  imports a file or directory (kubo's `--cid-version=1
//                                 --raw-leaves` layout) into Helia's blockstore, prints the CID
//   GET  /ipfs/CID?format=raw     a trustless gateway for the blocks Helia holds (offline:
//                                 never asks the upstream), application/vnd.ipld.raw
//   GET  /cat/CID[/PATH]          the file's bytes as Helia's UnixFS reader assembles them,
//                                 fetching missing blocks from UPSTREAM_GATEWAY_URL with
//                                 Helia's trustless-gateway block broker, which verifies
//                                 every block against its CID
import { createServer } from 'node:http'
import { basename } from 'node:path'
import { createHeliaLight } from 'helia'
import { trustlessGatewayBlockBroker } from '@helia/trustless-gateway-client'
import { fallbackRouter } from '@helia/fallback-router'
import { unixfs } from '@helia/unixfs'
import { CID } from 'multiformats/cid'
import { entries, importOptions } from './layout.mjs'

const upstream = process.argv[2]
// The upstream gateway is the one provider of every block. Helia (7.1) waits forever when
// it has only "fallback" routers, so the fallback router's answers are offered through a
// plain router instead.
const gateways = upstream ? fallbackRouter({ gateways: [upstream], shuffle: false }) : null
const helia = await createHeliaLight({
  blockBrokers: upstream ? [trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })] : [],
  routers: upstream
    ? [{ name: 'upstream-gateway', findProviders: (cid, options) => gateways.findProviders(cid, options) }]
    : []
}).start()
const fs = unixfs(helia)

async function add (path) {
  const name = basename(path)
  let root
  for await (const entry of fs.addAll(entries(path, name), importOptions)) {
    if (entry.path === name) root = entry.cid
  }
  return root
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost')
  try {
    if (req.method === 'POST' && url.pathname === '/add') {
      const cid = await add(url.searchParams.get('path'))
      res.writeHead(200, { 'content-type': 'text/plain' }).end(cid.toString())
      return
    }
    const [, kind, cidText, ...rest] = url.pathname.split('/')
    const cid = CID.parse(cidText)
    if (kind === 'ipfs' && req.method === 'GET') {
      if (!(await helia.blockstore.has(cid))) {
        res.writeHead(404).end(`block ${cid} not held here`)
        return
      }
      const chunks = []
      for await (const chunk of helia.blockstore.get(cid, { offline: true })) chunks.push(chunk)
      res.writeHead(200, { 'content-type': 'application/vnd.ipld.raw' }).end(Buffer.concat(chunks))
      return
    }
    if (kind === 'cat' && req.method === 'GET') {
      const path = rest.map(decodeURIComponent).join('/')
      const body = fs.cat(cid, { path: path || undefined, signal: AbortSignal.timeout(60000) })
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      for await (const chunk of body) res.write(chunk)
      res.end()
      return
    }
    res.writeHead(404).end('unknown route')
  } catch (err) {
    if (res.headersSent) res.destroy(err)
    else res.writeHead(500).end(String(err?.stack ?? err))
  }
})
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`))
process.on('SIGTERM', () => process.exit(0))
