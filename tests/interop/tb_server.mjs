// TinyBase's own createWsServer on a free loopback port; prints {"port": n} once listening
// and runs until stdin closes. With argv[2] === 'persist' each path gets a server-side
// MergeableStore (persisted in memory for the process lifetime), as createWsServer allows.
import {WebSocketServer} from 'ws';
import {createMergeableStore} from 'tinybase';
import {createCustomPersister} from 'tinybase/persisters';
import {createWsServer} from 'tinybase/synchronizers/synchronizer-ws-server';

const persist = process.argv[2] === 'persist';
const saved = new Map();
const wss = new WebSocketServer({port: 0, host: '127.0.0.1', maxPayload: 64 * 1024 * 1024});
await new Promise((resolve) => wss.on('listening', resolve));
const server = createWsServer(
  wss,
  persist
    ? (pathId) =>
        createCustomPersister(
          createMergeableStore(),
          async () => saved.get(pathId),
          async (getContent) => void saved.set(pathId, getContent()),
          () => 0,
          () => 0,
          undefined,
          2,
        )
    : undefined,
);
process.stdout.write(JSON.stringify({port: wss.address().port}) + '\n');
process.stdin.on('data', () => 0);
process.stdin.on('end', async () => {
  await server.destroy();
  process.exit(0);
});
