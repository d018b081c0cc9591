import { execFile } from 'node:child_process';
import { createClient, createCluster } from 'redis';
import {
  describeRedis,
  pubsubNumsub,
  shardNumsub,
  startRedis,
  startRedisCluster,
} from '../utils/redis-server.js';

/** Whether a process with this pid exists (our children are reaped on exit, so no zombies). */
function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * The redis-server processes serving these ports, by their process title
 * (`redis-server 127.0.0.1:PORT`). Not a count of every redis-server on the machine: other
 * specs may run servers of their own meanwhile.
 */
function serversOn(ports: number[]): Promise<string> {
  const pattern = `redis-server 127\\.0\\.0\\.1:(${ports.join('|')})( |$)`;
  return new Promise((resolve, reject) =>
    execFile('pgrep', ['-a', '-f', pattern], (error, stdout) => {
      // pgrep exits with 1 when nothing matches.
      if (error && error.code !== 1) reject(error);
      else resolve(stdout.trim());
    }),
  );
}

async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  timeout = 5000,
): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe().catch((error: Error) => error as unknown as T);
    if (accept(value)) return value;
    if (Date.now() > deadline) throw new Error(`still ${String(value)} after ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

describeRedis('redis test harness (real redis-server processes)', () => {
  it('starts a server, survives SIGKILL and restarts it on the same port', async () => {
    const server = await startRedis();
    const pids = [server.pid];
    expect(server.url).toBe(`redis://127.0.0.1:${server.port}`);
    expect(await serversOn([server.port])).toContain(String(server.pid));
    // No offline queue: a command while the server is down fails instead of waiting.
    const client = createClient({ url: server.url, disableOfflineQueue: true });
    client.on('error', () => undefined);
    const subscriber = client.duplicate();
    subscriber.on('error', () => undefined);
    try {
      await client.connect();
      await client.set('greeting', 'hello');
      expect(await client.get('greeting')).toBe('hello');
      expect(await server.cli('GET', 'greeting')).toBe('hello');

      await subscriber.connect();
      await subscriber.subscribe('news', () => undefined);
      expect(await pubsubNumsub(server, ['news', 'other'])).toEqual({ news: 1, other: 0 });
      await subscriber.unsubscribe('news');
      expect(await pubsubNumsub(server, ['news'])).toEqual({ news: 0 });

      await server.kill();
      expect(server.alive).toBe(false);
      expect(pidExists(pids[0])).toBe(false);
      await expect(client.ping()).rejects.toThrow();
      await expect(server.cli('PING')).rejects.toThrow(/Could not connect/);

      const port = server.port;
      await server.restart();
      pids.push(server.pid);
      expect(server.port).toBe(port);
      expect(server.pid).not.toBe(pids[0]);
      expect(await server.cli('PING')).toBe('PONG');
      // The client reconnects by itself; no persistence, so the key is gone.
      await eventually(
        () => client.ping(),
        (reply) => reply === 'PONG',
      );
      expect(await client.get('greeting')).toBeNull();
    } finally {
      client.destroy();
      subscriber.destroy();
      await server.stop();
    }
    await server.stop(); // idempotent
    expect(pids.filter(pidExists)).toEqual([]);
    expect(await serversOn([server.port])).toBe('');
    await expect(server.restart()).rejects.toThrow(/was stopped/);
  });

  it('fails fast, quoting the server, when the port is taken', async () => {
    const first = await startRedis();
    try {
      await expect(startRedis({ port: first.port })).rejects.toThrow(/Address already in use/);
    } finally {
      await first.stop();
    }
  });

  it('starts a 3-master cluster where sharded pub/sub works, and stops it', async () => {
    const cluster = await startRedisCluster();
    const ports = cluster.nodes.map((node) => node.port);
    const pids = cluster.nodes.map((node) => node.pid);
    expect(new Set(ports).size).toBe(3);
    expect(cluster.rootNodes).toEqual(ports.map((port) => ({ url: `redis://127.0.0.1:${port}` })));
    expect(await cluster.cli(ports[0], 'CLUSTER', 'INFO')).toMatch(/cluster_state:ok/);

    const publisher = createCluster({ rootNodes: cluster.rootNodes });
    const subscriber = createCluster({ rootNodes: cluster.rootNodes });
    publisher.on('error', () => undefined);
    subscriber.on('error', () => undefined);
    const channel = 'harness:{r:lobby}';
    try {
      await publisher.connect();
      await subscriber.connect();
      let deliver: (message: string) => void = () => undefined;
      const received = new Promise<string>((resolve) => (deliver = resolve));
      await subscriber.sSubscribe(channel, (message) => deliver(message));
      expect(await shardNumsub(cluster, [channel, 'harness:{r:nobody}'])).toEqual({
        [channel]: 1,
        'harness:{r:nobody}': 0,
      });
      expect(await publisher.sPublish(channel, 'hi')).toBe(1);
      expect(await received).toBe('hi');

      await subscriber.sUnsubscribe(channel);
      expect(await shardNumsub(cluster, [channel])).toEqual({ [channel]: 0 });
    } finally {
      publisher.destroy();
      subscriber.destroy();
      await cluster.stop();
    }
    await cluster.stop(); // idempotent
    expect(pids.filter(pidExists)).toEqual([]);
    expect(await serversOn(ports)).toBe('');
  });
});
