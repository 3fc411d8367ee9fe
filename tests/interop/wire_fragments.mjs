// TinyBase's own WsSynchronizer fragments a large ContentDiff; print the raw frames it sent
// and the changes it meant, so the Python decoder can be checked against the real thing.
import {WebSocketServer, WebSocket} from 'ws';
import {createMergeableStore} from 'tinybase';
import {createWsSynchronizer} from 'tinybase/synchronizers/synchronizer-ws-client';

const server = new WebSocketServer({port: 0, host: '127.0.0.1'});
await new Promise((resolve) => server.on('listening', resolve));
const frames = [];
server.on('connection', (ws) => ws.on('message', (data) => frames.push(data.toString('utf8'))));

const store = createMergeableStore('fragmenter');
const bodies = [];
store.addDidFinishTransactionListener(() => {
  const changes = store.getTransactionMergeableChanges();
  bodies.push(JSON.parse(JSON.stringify(changes, (_k, v) => (v === undefined ? '\uFFFC' : v))));
});
const ws = new WebSocket(`ws://127.0.0.1:${server.address().port}/room`);
const sync = await createWsSynchronizer(store, ws, 0.2, undefined, undefined, undefined, 1000);
await sync.startSync();
frames.length = 0;
bodies.length = 0;
store.setCell('t', 'r', 'c', 'é'.repeat(3000) + '😀'.repeat(500) + '\n"q"');
store.setValues({v: 'x'.repeat(5000), n: 1.5e300});
await new Promise((resolve) => setTimeout(resolve, 300));
const groups = [];
for (const frame of frames) {
  const lines = frame.split('\n');
  if (lines.length >= 5 && /^[-0-9A-Za-z_]{16}$/.test(lines[1])) {
    const id = lines[1];
    let group = groups.find((g) => g.id === id);
    if (!group) groups.push((group = {id, frames: []}));
    group.frames.push(frame);
  }
}
await sync.destroy();
server.close();
console.log(JSON.stringify({frames: groups.map((g) => g.frames), bodies}));
process.exit(0);
