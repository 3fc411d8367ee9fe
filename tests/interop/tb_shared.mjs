// TinyBase (>= 9.3) WsSynchronizers sharing one WebSocket (subprotocol 'tinybase'), one per
// channel. Args: url, then channel ids. Each channel's store sets js/<channel>/n to its
// 1-based index, then waits (at most 20 s) until it holds a 'py' table; prints one JSON line
// with the negotiated subprotocol, ignored errors and each store's tables and hashes.
import {WebSocket} from 'ws';
import {createMergeableStore} from 'tinybase';
import {createWsSynchronizer} from 'tinybase/synchronizers/synchronizer-ws-client';

// (an optional first argument --fragment=N makes the synchronizers fragment their payloads)
const args = process.argv.slice(2);
const fragmentSize = args[0]?.startsWith('--fragment=')
  ? Number(args.shift().slice('--fragment='.length))
  : undefined;
const [url, ...channels] = args;
const socket = new WebSocket(url, 'tinybase');
const errors = [];
const entries = [];
for (const [index, channel] of channels.entries()) {
  const store = createMergeableStore();
  const synchronizer = await createWsSynchronizer(
    store,
    socket,
    channel,
    1,
    undefined,
    undefined,
    (error) => errors.push(String(error?.message ?? error)),
    fragmentSize,
  );
  await synchronizer.startSync();
  store.setCell('js', channel, 'n', index + 1);
  if (fragmentSize) {
    store.setCell('js', channel, 'text', 'é'.repeat(2_000));
  }
  entries.push([channel, store, synchronizer]);
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const deadline = Date.now() + 20_000;
while (Date.now() < deadline && !entries.every(([, store]) => store.hasTable('py'))) {
  await sleep(50);
}
await sleep(300); // (the last changes travel both ways)
const result = {protocol: socket.protocol, errors, stores: {}};
for (const [channel, store, synchronizer] of entries) {
  result.stores[channel] = {
    tables: store.getTables(),
    hashes: store.getMergeableContentHashes(),
  };
  await synchronizer.destroy();
}
console.log(JSON.stringify(result));
process.exit(0);
