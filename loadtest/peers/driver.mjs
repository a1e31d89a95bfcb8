// The peers benchmark's one load driver: canvas-sync, Hocuspocus and y-websocket's server,
// each through its own protocol, under the same open-loop drag.
//
//   NODE_PATH=<peers>/node_modules node driver.mjs '{"system":"canvas","url":"ws://127.0.0.1:8080",...}'
//
// Every client drags its own shape (a canvas object; a Y.Map entry) RATE times a second on
// an open loop (sends are due on a fixed schedule whatever the server answers), putting
// performance.now() in the edit. A few observer clients per project decode everything they
// receive and time each other client's edit from send to arrival (one process, one clock);
// the others read their sockets and drop what they read, so the server's flow control is real.
//
// Output, one JSON object per line: {"event":"ready"} once every client is connected and
// holds its shape, {"event":"start"} and {"event":"stop"} around the measured window (the
// caller samples the server's CPU time there), then {"event":"result",...}.
import { createRequire } from 'node:module'
import path from 'node:path'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'

const require = createRequire(path.join(process.env.NODE_PATH, '..', 'package.json'))
const WebSocket = require('ws')
const Y = require('yjs')
const encoding = require('lib0/encoding')
const decoding = require('lib0/decoding')

const cfg = {
  system: 'canvas', // canvas | hocuspocus | ywebsocket
  url: 'ws://127.0.0.1:8080',
  projects: 1,
  clients: 16, // per project
  observers: 4, // per project: the first ones decode everything
  rate: 20, // edits per second per client
  warmup: 1,
  seconds: 4,
  settle: 1, // after the window: late arrivals still count
  deflate: false, // offer permessage-deflate (as browsers do)
  prefix: 'peers',
  connectConcurrency: 32,
  ...JSON.parse(process.argv[2] || '{}'),
}
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')

// --- Yjs framing: y-websocket's messages, and Hocuspocus' (each prefixed with the document name)
const SYNC = 0
const AUTH = 2
const SYNC_REPLY = 4
const SYNC_STATUS = 8
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2

function yMessage(docName, type, write) {
  const e = encoding.createEncoder()
  if (cfg.system === 'hocuspocus') encoding.writeVarString(e, docName)
  encoding.writeVarUint(e, type)
  write(e)
  return encoding.toUint8Array(e)
}

// --- the window, and what the observers record
let windowStart = Infinity
let windowStop = Infinity
const lags = []
let expectedByObservers = 0
const closedEarly = { count: 0, codes: {} }
let stopping = false

function record(sentAt, now) {
  if (sentAt >= windowStart && sentAt < windowStop) lags.push(now - sentAt)
}

class Client {
  constructor(project, index) {
    this.project = project
    this.index = index
    this.key = `s${index}`
    this.observer = index < cfg.observers
    this.sent = 0
    this.sentInWindow = 0
    this.acks = 0
    this.bytes = 0
    this.x = 0
  }

  connect() {
    return new Promise((resolve, reject) => {
      const docName = `${cfg.prefix}-${this.project}`
      this.docName = docName
      let url = cfg.url
      let protocols
      if (cfg.system === 'canvas') {
        url = `${cfg.url}/ws/${docName}`
        protocols = ['canvas-sync.v2']
      } else if (cfg.system === 'ywebsocket') {
        url = `${cfg.url}/${docName}`
      }
      const ws = new WebSocket(url, protocols, {
        perMessageDeflate: cfg.deflate,
        skipUTF8Validation: true,
        handshakeTimeout: 60000,
      })
      this.ws = ws
      ws.binaryType = 'nodebuffer'
      this.ready = false
      const timer = setTimeout(() => reject(new Error(`client ${this.project}/${this.index}: not ready in 60 s`)), 60000)
      this.onReady = () => {
        clearTimeout(timer)
        this.ready = true
        resolve()
      }
      ws.on('error', (err) => {
        if (!this.ready) reject(err)
      })
      ws.on('close', (code) => {
        if (!stopping) {
          closedEarly.count++
          closedEarly.codes[code] = (closedEarly.codes[code] || 0) + 1
        }
      })
      ws.on('open', () => this.opened())
      ws.on('message', (data) => this.receive(data))
    })
  }

  opened() {
    if (cfg.system === 'canvas') {
      this.ws.send(
        JSON.stringify({ op: 'create', req: 'c', object: { id: this.key, type: 'rect', x: 0, y: 0, t: 0 } }),
      )
      return
    }
    this.doc = new Y.Doc()
    this.map = this.doc.getMap('shapes')
    this.doc.on('update', (update, origin) => {
      if (origin !== 'remote' && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(yMessage(this.docName, SYNC, (e) => {
          encoding.writeVarUint(e, UPDATE)
          encoding.writeVarUint8Array(e, update)
        }))
      }
    })
    if (this.observer) {
      this.map.observe((event) => {
        const now = performance.now()
        for (const key of event.keysChanged) {
          if (key === this.key) continue
          const value = this.map.get(key)
          if (value && typeof value.t === 'number') record(value.t, now)
        }
      })
    }
    if (cfg.system === 'hocuspocus') {
      // the token message first (no token configured: any string), as the provider does
      this.ws.send(yMessage(this.docName, AUTH, (e) => {
        encoding.writeVarUint(e, 0)
        encoding.writeVarString(e, '')
      }))
    }
    this.ws.send(yMessage(this.docName, SYNC, (e) => {
      encoding.writeVarUint(e, STEP1)
      encoding.writeVarUint8Array(e, Y.encodeStateVector(this.doc))
    }))
  }

  receive(data) {
    this.bytes += data.length
    if (this.ready && !this.observer) {
      // drain: read, drop; a Hocuspocus ack or a canvas-sync ack is only counted
      if (cfg.system === 'canvas') {
        if (data.includes('"op":"ack"')) this.acks++
      } else if (cfg.system === 'hocuspocus' && data.length < 64 && data[data[0] + 1] === SYNC_STATUS) {
        this.acks++ // a short name: one length byte, the name, then the type
      }
      return
    }
    if (cfg.system === 'canvas') this.receiveCanvas(data)
    else this.receiveYjs(data)
  }

  receiveCanvas(data) {
    const now = performance.now()
    const body = JSON.parse(data)
    for (const m of Array.isArray(body) ? body : [body]) {
      if (m.op === 'upsert') {
        const o = m.object
        if (o.id !== this.key && typeof o.t === 'number') record(o.t, now)
      } else if (m.op === 'ack') {
        this.acks++
        if (m.req === 'c' && !this.ready) this.onReady()
      } else if (m.op === 'error' && !this.ready) {
        if (m.code === 'conflict' && m.req === 'c') this.onReady()
        else throw new Error(`canvas-sync refused the create: ${JSON.stringify(m)}`)
      }
    }
  }

  receiveYjs(data) {
    const d = decoding.createDecoder(new Uint8Array(data.buffer, data.byteOffset, data.length))
    if (cfg.system === 'hocuspocus') decoding.readVarString(d)
    const type = decoding.readVarUint(d)
    if (type === SYNC || type === SYNC_REPLY) {
      const step = decoding.readVarUint(d)
      if (step === STEP1) {
        const sv = decoding.readVarUint8Array(d)
        this.ws.send(yMessage(this.docName, SYNC, (e) => {
          encoding.writeVarUint(e, STEP2)
          encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(this.doc, sv))
        }))
      } else {
        const update = decoding.readVarUint8Array(d)
        if (this.observer) Y.applyUpdate(this.doc, update, 'remote')
        if (step === STEP2 && !this.ready) this.onReady()
      }
    } else if (type === SYNC_STATUS) {
      this.acks++
    }
  }

  edit() {
    const t = performance.now()
    this.x = (this.x + 7) % 1000
    const y = (this.x * 3) % 700
    this.sent++
    if (t >= windowStart && t < windowStop) this.sentInWindow++
    if (this.ws.readyState !== WebSocket.OPEN) return
    if (cfg.system === 'canvas') {
      this.ws.send(`{"op":"update","req":"${this.sent}","id":"${this.key}","props":{"x":${this.x},"y":${y},"t":${t}}}`)
    } else {
      this.map.set(this.key, { x: this.x, y, t })
    }
  }
}

async function connectAll(clients) {
  let next = 0
  const worker = async () => {
    while (next < clients.length) await clients[next++].connect()
  }
  await Promise.all(Array.from({ length: Math.min(cfg.connectConcurrency, clients.length) }, worker))
}

function pct(sorted, q) {
  if (!sorted.length) return null
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((q / 100) * sorted.length) - 1))
  return Math.round(sorted[i] * 100) / 100
}

async function main() {
  const clients = []
  for (let p = 0; p < cfg.projects; p++) for (let i = 0; i < cfg.clients; i++) clients.push(new Client(p, i))
  const connectStarted = performance.now()
  await connectAll(clients)
  const connectSeconds = (performance.now() - connectStarted) / 1000
  say({ event: 'ready', connect_s: Math.round(connectSeconds * 100) / 100 })

  // the open loop: each client due every 1/rate s, the clients spread over one period
  const period = 1000 / cfg.rate
  const begin = performance.now() + 50
  windowStart = begin + cfg.warmup * 1000
  windowStop = windowStart + cfg.seconds * 1000
  let lateSends = 0
  clients.forEach((c, k) => {
    let due = begin + (k / clients.length) * period
    const tick = () => {
      if (stopping || due >= windowStop) return
      if (performance.now() - due > period) lateSends++
      c.edit()
      due += period
      setTimeout(tick, Math.max(0, due - performance.now()))
    }
    setTimeout(tick, Math.max(0, due - performance.now()))
  })
  const loop = monitorEventLoopDelay({ resolution: 5 })
  await new Promise((r) => setTimeout(r, Math.max(0, windowStart - performance.now())))
  say({ event: 'start' })
  loop.enable()
  const cpu = process.cpuUsage()
  await new Promise((r) => setTimeout(r, Math.max(0, windowStop - performance.now())))
  say({ event: 'stop' })
  const driverCpu = process.cpuUsage(cpu)
  loop.disable()
  await new Promise((r) => setTimeout(r, cfg.settle * 1000))
  stopping = true

  const sent = clients.reduce((n, c) => n + c.sentInWindow, 0)
  for (let p = 0; p < cfg.projects; p++) {
    const mine = clients.filter((c) => c.project === p)
    const edits = mine.reduce((n, c) => n + c.sentInWindow, 0)
    for (const o of mine.filter((c) => c.observer)) expectedByObservers += edits - o.sentInWindow
  }
  lags.sort((a, b) => a - b)
  say({
    event: 'result',
    system: cfg.system,
    clients: clients.length,
    edits: sent,
    edits_per_s: Math.round(sent / cfg.seconds),
    acks: clients.reduce((n, c) => n + c.acks, 0),
    observed: lags.length,
    expected: expectedByObservers,
    p50_ms: pct(lags, 50),
    p90_ms: pct(lags, 90),
    p99_ms: pct(lags, 99),
    max_ms: lags.length ? Math.round(lags[lags.length - 1]) : null,
    within_100ms: lags.length ? lags.filter((l) => l < 100).length / lags.length : null,
    closed_early: closedEarly.count,
    close_codes: closedEarly.codes,
    received_mib: Math.round(clients.reduce((n, c) => n + c.bytes, 0) / 2 ** 20 * 10) / 10,
    late_sends: lateSends,
    driver_cores: Math.round(((driverCpu.user + driverCpu.system) / 1e6 / cfg.seconds) * 100) / 100,
    driver_loop_p99_ms: Math.round(loop.percentile(99) / 1e4) / 100,
    connect_s: Math.round(connectSeconds * 100) / 100,
  })
  for (const c of clients) c.ws.terminate()
  process.exit(0)
}

main().catch((err) => {
  say({ event: 'error', message: String(err && err.stack ? err.stack : err) })
  process.exit(1)
})
