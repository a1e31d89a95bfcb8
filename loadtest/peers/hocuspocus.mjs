// Hocuspocus 4 as the peers benchmark runs it: its defaults (2 s store debounce, 10 s at
// most; broadcasts coalesced per event-loop turn), in memory or with its SQLite extension.
//
//   NODE_PATH=<peers>/node_modules node hocuspocus.mjs PORT memory
//   NODE_PATH=<peers>/node_modules node hocuspocus.mjs PORT sqlite /tmp/docs.sqlite
//
// Prints "listening PORT" once it accepts connections.
import { createRequire } from 'node:module'
import path from 'node:path'

const require = createRequire(path.join(process.env.NODE_PATH, '..', 'package.json'))
const { Server } = require('@hocuspocus/server')

const [port, mode, database] = process.argv.slice(2)
const extensions = []
if (mode === 'sqlite') {
  const { SQLite } = require('@hocuspocus/extension-sqlite')
  extensions.push(new SQLite({ database }))
} else if (mode !== 'memory') {
  console.error(`unknown mode ${mode}: memory or sqlite`)
  process.exit(2)
}

const server = new Server({ port: Number(port), address: '127.0.0.1', quiet: true, extensions })
await server.listen()
console.log(`listening ${port}`)
