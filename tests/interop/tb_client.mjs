// A TinyBase MergeableStore + WsSynchronizer driven by JSON lines on stdin, one reply line
// (JSON) per command on stdout. Lets Python tests use the real TinyBase client as a peer.
// Commands: {cmd:'connect', url, fragmentSize?, timeout?}, {cmd:'ops', ops:[[method, ...args]]},
// {cmd:'get'}, {cmd:'wait', tables, values, timeout}, {cmd:'close'}, {cmd:'exit'}.
import {createInterface} from 'node:readline';
import {WebSocket} from 'ws';
import {createMergeableStore} from 'tinybase';
import {createWsSynchronizer} from 'tinybase/synchronizers/synchronizer-ws-client';

const store = createMergeableStore(process.argv[2] || undefined);
let synchronizer;
let socket;
const errors = [];
let closed = null;

const snapshot = () => ({
  tables: store.getTables(),
  values: store.getValues(),
  hashes: store.getMergeableContentHashes(),
  stats: synchronizer?.getSynchronizerStats?.() ?? null,
  errors,
  closed,
});

const sameJson = (a, b) => JSON.stringify(sortDeep(a)) === JSON.stringify(sortDeep(b));
const sortDeep = (x) =>
  Array.isArray(x)
    ? x.map(sortDeep)
    : x && typeof x === 'object'
      ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, sortDeep(x[k])]))
      : x;

const handlers = {
  async connect({url, fragmentSize, timeout = 1}) {
    socket = new WebSocket(url);
    socket.on('close', (code, reason) => (closed = [code, reason.toString()]));
    synchronizer = await createWsSynchronizer(
      store,
      socket,
      timeout,
      undefined,
      undefined,
      (error) => errors.push(String(error?.message ?? error)),
      fragmentSize,
    );
    await synchronizer.startSync();
    return {ok: true};
  },
  async ops({ops}) {
    store.transaction(() => {
      for (const [method, ...args] of ops) {
        store[method](...args);
      }
    });
    return {ok: true};
  },
  async get() {
    return snapshot();
  },
  async wait({tables, values, timeout = 10}) {
    const end = Date.now() + timeout * 1000;
    while (Date.now() < end) {
      if (sameJson(store.getTables(), tables) && sameJson(store.getValues(), values)) {
        return {ok: true, ...snapshot()};
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return {ok: false, ...snapshot()};
  },
  async raw({payload}) {
    socket.send(payload);
    return {ok: true};
  },
  async close() {
    await synchronizer?.destroy();
    return {ok: true};
  },
  async exit() {
    await synchronizer?.destroy();
    setTimeout(() => process.exit(0), 10);
    return {ok: true};
  },
};

const lines = createInterface({input: process.stdin});
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    let reply;
    try {
      const command = JSON.parse(line);
      reply = await handlers[command.cmd](command);
    } catch (error) {
      reply = {ok: false, error: String(error?.stack ?? error)};
    }
    process.stdout.write(JSON.stringify(reply) + '\n');
  });
});
lines.on('close', () => setTimeout(() => process.exit(0), 50));
