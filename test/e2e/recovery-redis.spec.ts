import { startChildApp, type ChildApp } from '../utils/child-app.js';
import {
  describeRedis,
  startRedis,
  startRedisCluster,
  type RedisCluster,
  type RedisServer,
} from '../utils/redis-server.js';
import { delay, TestClient } from '../utils/ws-client.js';
import type { SendArg } from '../fixtures/recovery-app.js';

/*
 * Recovery across instances (issue 11): two app instances (test/fixtures/recovery-app.ts in
 * child processes) share one real redis-server; each recovery route's history is a Redis
 * Stream written by one Lua script per broadcast. A page that leaves instance A and comes back
 * on instance B with its last id gets exactly what it missed, in order, then live traffic,
 * while broadcasts race the replay; and the documented signal, never a partial replay, when the
 * history cannot give it (window passed, unknown epoch, Redis flushed or restarted).
 */

const FIXTURE = 'test/fixtures/recovery-app.ts';

interface Frame {
  event: string;
  data: any;
  id?: string;
}

const seqOf = (id: string | undefined): number => Number(id!.slice(id!.lastIndexOf('.') + 1));
const epochOf = (id: string | undefined): string => id!.slice(0, id!.lastIndexOf('.'));

describeRedis('recovery across instances (Redis Streams)', () => {
  let redis: RedisServer;
  let a: ChildApp;
  let b: ChildApp;
  const clients: TestClient[] = [];
  let prefix = 0;

  async function startPair(): Promise<void> {
    const env = { REDIS_URL: redis.url, KEY_PREFIX: `rec${++prefix}` };
    [a, b] = await Promise.all([startChildApp(FIXTURE, { env }), startChildApp(FIXTURE, { env })]);
    expect(await a.request('ready')).toBe(true);
    expect(await b.request('ready')).toBe(true);
  }

  beforeAll(async () => {
    redis = await startRedis();
  });
  beforeEach(startPair);
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.terminate();
    await Promise.all([a?.stop(), b?.stop()]);
  });

  async function open(app: ChildApp, path: string): Promise<TestClient> {
    const c = await TestClient.open(app.url(path));
    clients.push(c);
    return c;
  }
  const next = (c: TestClient, timeout = 5000): Promise<Frame> => c.nextJson<Frame>(timeout);
  const send = (app: ChildApp, arg: SendArg): Promise<number> => app.request<number>('send', arg);

  /** Frames until `count` have arrived (or fails, naming what did). */
  async function take(c: TestClient, count: number, timeout = 5000): Promise<Frame[]> {
    const frames: Frame[] = [];
    while (frames.length < count) {
      try {
        frames.push(await next(c, timeout));
      } catch {
        throw new Error(`${frames.length} of ${count} frames: ${JSON.stringify(frames.slice(-3))}`);
      }
    }
    return frames;
  }

  /** Frames until one with `event`, included. */
  async function until(c: TestClient, event: string, timeout = 10_000): Promise<Frame[]> {
    const frames: Frame[] = [];
    for (;;) {
      const frame = await next(c, timeout);
      frames.push(frame);
      if (frame.event === event) return frames;
    }
  }

  it('a page that leaves A and comes back on B gets exactly the 50 it missed, then live ones', async () => {
    const c = await open(a, '/board');
    const position = await next(c);
    expect(position).toMatchObject({ event: 'position', data: null });
    await send(a, { route: '/board', count: 50 });
    const first = await take(c, 50);
    expect(first.map((f) => f.data)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    const epoch = epochOf(first[0].id);
    expect(epochOf(position.id)).toBe(epoch);
    expect(first.map((f) => seqOf(f.id))).toEqual(
      Array.from({ length: 50 }, (_, i) => seqOf(position.id) + i + 1),
    );
    const last = first[49].id!;
    await c.close();
    // 50 more while it is away, half from each instance.
    await send(a, { route: '/board', count: 25, from: 50 });
    await send(b, { route: '/board', count: 25, from: 75 });
    await delay(100);
    const back = await open(b, `/board?lastEventId=${encodeURIComponent(last)}`);
    const answer = await next(back);
    expect(answer).toEqual({
      event: 'recovery',
      data: { recovered: true, replayed: 50 },
      id: last,
    });
    const missed = await take(back, 50);
    expect(missed.map((f) => f.data)).toEqual(Array.from({ length: 50 }, (_, i) => i + 51));
    expect(missed.map((f) => seqOf(f.id))).toEqual(
      Array.from({ length: 50 }, (_, i) => seqOf(last) + i + 1),
    );
    // Then live traffic, from either instance.
    await send(a, { route: '/board', count: 1, from: 100 });
    expect(await next(back)).toMatchObject({ data: 101, id: `${epoch}.${seqOf(last) + 51}` });
    await expect(back.next(300)).rejects.toThrow(/no message/);
  });

  it('no gap and no duplicate at the seam while another instance broadcasts every 2 ms', async () => {
    const c = await open(a, '/storm');
    await next(c);
    const loop = a.request<number>('loop', { route: '/storm', every: 2, duration: 1500 });
    await delay(300);
    const seen: Frame[] = [];
    while (seen.length < 20) seen.push(await next(c));
    c.socket.terminate();
    const last = seen[seen.length - 1].id!;
    await delay(200);
    // Reconnects on both instances at once, racing the loop.
    const onB = await open(b, `/storm?lastEventId=${last}`);
    const onA = await open(a, `/storm?lastEventId=${last}`);
    const total = await loop;
    for (const back of [onB, onA]) {
      const frames = await until(back, 'end');
      expect(frames[0]).toMatchObject({ event: 'recovery', data: { recovered: true } });
      const rest = frames.slice(1);
      const seqs = rest.map((f) => seqOf(f.id));
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => seqOf(last) + i + 1));
      const data = rest.filter((f) => f.event === 'n').map((f) => f.data);
      expect(data).toEqual(Array.from({ length: data.length }, (_, i) => seen[19].data + i + 1));
      expect(data[data.length - 1]).toBe(total);
    }
  });

  it('100 pages drop at different moments and come back at once on both instances: each gapless', async () => {
    const pages = await Promise.all(Array.from({ length: 100 }, () => open(a, '/storm')));
    await Promise.all(pages.map((p) => next(p)));
    const loop = b.request<number>('loop', { route: '/storm', every: 2, duration: 2000 });
    await delay(200);
    // Each page reads a different number of frames before it drops: different positions.
    const lastIds = await Promise.all(
      pages.map(async (p, i) => {
        let last: Frame | undefined;
        for (let k = 0; k <= i % 10; k++) last = await next(p);
        p.socket.terminate();
        return last!;
      }),
    );
    await delay(300);
    const back = await Promise.all(
      lastIds.map((last, i) => open(i % 2 ? a : b, `/storm?lastEventId=${last.id}`)),
    );
    const total = await loop;
    await Promise.all(
      back.map(async (p, i) => {
        const frames = await until(p, 'end', 15_000);
        expect(frames[0]).toMatchObject({ event: 'recovery', data: { recovered: true } });
        const seqs = frames.slice(1).map((f) => seqOf(f.id));
        const from = seqOf(lastIds[i].id);
        expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, k) => from + k + 1));
        expect(frames[frames.length - 1].data).toBe(total);
      }),
    );
  });

  it('a page that re-joins only room a gets only room a of what it missed', async () => {
    const c = await open(a, '/board?rooms=a,b');
    await next(c);
    await send(a, { room: 'a', count: 1, event: 'a' });
    const [seen] = await take(c, 1);
    await c.close();
    await send(b, { room: 'a', count: 3, event: 'a', from: 1 });
    await send(a, { room: 'b', count: 3, event: 'b' });
    await send(b, { route: '/board', count: 1, event: 'all' });
    await delay(100);
    const back = await open(b, `/board?rooms=a&lastEventId=${seen.id}`);
    const frames = await take(back, 5);
    expect(frames[0]).toMatchObject({ event: 'recovery', data: { recovered: true, replayed: 4 } });
    expect(frames.slice(1).map((f) => `${f.event}${f.data}`)).toEqual(['a2', 'a3', 'a4', 'all1']);
    await expect(back.next(300)).rejects.toThrow(/no message/);
  });

  it('a volatile broadcast reaches live pages on every instance, without an id, and is not replayed', async () => {
    const onA = await open(a, '/board');
    const onB = await open(b, '/board');
    await next(onA);
    const position = await next(onB);
    await send(a, { route: '/board', count: 1, event: 'v', volatile: true });
    for (const c of [onA, onB]) expect(await next(c)).toEqual({ event: 'v', data: 1 });
    await onB.close();
    await send(a, { route: '/board', count: 1, event: 'v', from: 1, volatile: true });
    await send(a, { route: '/board', count: 1, event: 'kept' });
    expect(await next(onA)).toEqual({ event: 'v', data: 2 });
    expect(await next(onA)).toMatchObject({ event: 'kept', data: 1 });
    const back = await open(b, `/board?lastEventId=${position.id}`);
    expect(await next(back)).toMatchObject({ data: { recovered: true, replayed: 1 } });
    expect(await next(back)).toMatchObject({ event: 'kept', data: 1 });
    await expect(back.next(200)).rejects.toThrow(/no message/);
  });

  it('a message to one connection of the route reaches it at once, without an id (not kept)', async () => {
    const c = await open(a, '/board?announce=me');
    const frames = await take(c, 2);
    const position = frames.find((f) => f.event === 'position')!;
    const me = frames.find((f) => f.event === 'me')!;
    expect(me).toEqual({ event: 'me', data: expect.any(String) });
    await b.request('send', { route: '/board', count: 1, event: 'all' });
    expect(await next(c)).toMatchObject({ event: 'all', data: 1, id: expect.any(String) });
    await expect(c.next(200)).rejects.toThrow(/no message/);
    expect(epochOf(position.id)).toBeTruthy();
  });

  it('too_old past the window, history_lost for another epoch, unknown_position for nonsense', async () => {
    const c = await open(a, '/short');
    const position = await next(c);
    await send(a, { route: '/short', count: 1 });
    const [one] = await take(c, 1);
    await send(b, { route: '/short', count: 1, from: 1 });
    await take(c, 1);
    await delay(400);
    await send(a, { route: '/short', count: 1, from: 2 });
    const cases: [string, string][] = [
      [one.id!, 'too_old'],
      [`nope.${seqOf(one.id)}`, 'history_lost'],
      [`${epochOf(one.id)}.999`, 'unknown_position'],
      ['garbage', 'unknown_position'],
    ];
    for (const [id, reason] of cases) {
      const back = await open(b, `/short?lastEventId=${encodeURIComponent(id)}`);
      const answer = await next(back);
      expect(answer).toMatchObject({ event: 'recovery', data: { recovered: false, reason } });
      expect(epochOf(answer.id)).toBe(epochOf(position.id));
      await expect(back.next(200)).rejects.toThrow(/no message/);
    }
  });

  it('after FLUSHALL a stale id gets history_lost, live pages keep receiving in a new epoch', async () => {
    const live = await open(b, '/board');
    await next(live);
    const c = await open(a, '/board');
    await next(c);
    await send(a, { route: '/board', count: 3 });
    const seen = await take(c, 3);
    await take(live, 3);
    await c.close();
    expect(await redis.cli('FLUSHALL')).toBe('OK');
    await send(a, { route: '/board', count: 2, from: 3 });
    const after = await take(live, 2);
    expect(after.map((f) => f.data)).toEqual([4, 5]);
    expect(epochOf(after[0].id)).not.toBe(epochOf(seen[0].id));
    expect(after.map((f) => seqOf(f.id))).toEqual([1, 2]);
    const back = await open(b, `/board?lastEventId=${seen[2].id}`);
    expect(await next(back)).toMatchObject({
      event: 'recovery',
      data: { recovered: false, reason: 'history_lost' },
      id: after[1].id,
    });
    await expect(back.next(200)).rejects.toThrow(/no message/);
  });

  it('fills what an instance missed while its subscriber reconnected: ids stay gapless', async () => {
    const c = await open(b, '/storm');
    await next(c);
    const loop = a.request<number>('loop', { route: '/storm', every: 3, duration: 2500 });
    await delay(400);
    // Every pub/sub connection dies: both instances reconnect, verify and catch up.
    await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await loop;
    const frames = await until(c, 'end', 15_000);
    const entries = frames.filter((f) => f.event !== 'recovery');
    const signals = frames.filter((f) => f.event === 'recovery');
    // A's broadcasts while A was not ready were not stored (and A's own pages were told); B's
    // page misses nothing that was stored: its ids are gapless, with no signal.
    expect(signals).toEqual([]);
    const seqs = entries.map((f) => seqOf(f.id));
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => seqs[0] + i));
    const data = entries.filter((f) => f.event === 'n').map((f) => f.data);
    expect(new Set(data).size).toBe(data.length);
    expect(data).toEqual([...data].sort((x, y) => x - y));
  });

  it("Redis killed mid-stream: the sender's pages are told once, a reconnect is answered, nothing crashes", async () => {
    const c = await open(a, '/board');
    const d = await open(b, '/board');
    await next(c);
    await next(d);
    await send(a, { route: '/board', count: 2 });
    const seen = await take(c, 2);
    await take(d, 2);
    await redis.kill();
    await delay(300);
    // Three broadcasts A cannot store: its page hears recovered:false once, not three times.
    await send(a, { route: '/board', count: 3, from: 2 });
    expect(await next(c)).toMatchObject({
      event: 'recovery',
      data: { recovered: false, reason: 'history_lost' },
    });
    await expect(c.next(300)).rejects.toThrow(/no message/);
    await expect(d.next(100)).rejects.toThrow(/no message/);
    // A reconnect while the history is unreachable is answered, not left waiting.
    const during = await open(b, `/board?lastEventId=${seen[1].id}`);
    expect(await next(during)).toMatchObject({
      event: 'recovery',
      data: { recovered: false, reason: 'history_lost' },
    });
    await redis.restart();
    expect(await a.request('ready')).toBe(true);
    expect(await b.request('ready')).toBe(true);
    await send(a, { route: '/board', count: 1, from: 5 });
    for (const page of [c, d]) {
      const frames = await until(page, 'n');
      const signals = frames.slice(0, -1);
      expect(signals.length).toBeLessThanOrEqual(1);
      for (const signal of signals)
        expect(signal).toMatchObject({ data: { recovered: false, reason: 'history_lost' } });
      expect(frames[frames.length - 1]).toMatchObject({ data: 6 });
      expect(epochOf(frames[frames.length - 1].id)).not.toBe(epochOf(seen[0].id));
    }
    a.assertAlive();
    b.assertAlive();
  });

  it('a Redis restart without persistence tells live pages recovered:false (history_lost)', async () => {
    const c = await open(b, '/board');
    await next(c);
    await send(a, { route: '/board', count: 2 });
    const seen = await take(c, 2);
    await redis.kill();
    await redis.restart();
    expect(await a.request('ready')).toBe(true);
    expect(await b.request('ready')).toBe(true);
    await send(a, { route: '/board', count: 1, from: 2 });
    const frames = await take(c, 1, 10_000);
    // The first broadcast of the new history has seq 1: it arrives; whether a signal came
    // before it depends on whether B read the new epoch first. Either way, no old id is reused.
    const all = [...frames];
    while (all[all.length - 1].event === 'recovery') all.push(await next(c));
    const data = all.filter((f) => f.event === 'n');
    expect(data).toEqual([expect.objectContaining({ data: 3 })]);
    expect(epochOf(data[0].id)).not.toBe(epochOf(seen[0].id));
    const back = await open(a, `/board?lastEventId=${seen[1].id}`);
    expect(await next(back)).toMatchObject({ data: { recovered: false, reason: 'history_lost' } });
  });
});

/** The same replay over a three-master cluster (sharded pub/sub) and over an ioredis client. */
describeRedis('recovery across instances: cluster and ioredis', () => {
  let cluster: RedisCluster;
  let redis: RedisServer;
  const apps: ChildApp[] = [];
  const clients: TestClient[] = [];

  beforeAll(async () => {
    [cluster, redis] = await Promise.all([startRedisCluster(), startRedis()]);
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.terminate();
    await Promise.all(apps.splice(0).map((app) => app.stop()));
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  const topologies: [string, () => Record<string, string>][] = [
    ['a cluster', () => ({ REDIS_CLUSTER: JSON.stringify(cluster.rootNodes.map((n) => n.url)) })],
    ['ioredis', () => ({ REDIS_URL: redis.url, REDIS_DRIVER: 'ioredis' })],
  ];
  it.each(topologies)('on %s: A to B with 30 missed, then live', async (_name, topology) => {
    const env = { ...topology(), KEY_PREFIX: `recx${Date.now()}` };
    const [a, b] = await Promise.all([
      startChildApp(FIXTURE, { env }),
      startChildApp(FIXTURE, { env }),
    ]);
    apps.push(a, b);
    expect(await a.request('ready')).toBe(true);
    expect(await b.request('ready')).toBe(true);
    const c = await TestClient.open(a.url('/board?rooms=r'));
    clients.push(c);
    await c.nextJson<Frame>(5000);
    await a.request('send', { route: '/board', count: 10 });
    let last: Frame | undefined;
    for (let i = 0; i < 10; i++) last = await c.nextJson<Frame>(5000);
    await c.close();
    await b.request('send', { route: '/board', count: 20, from: 10 });
    await a.request('send', { room: 'r', count: 10, from: 30 });
    await delay(100);
    const back = await TestClient.open(b.url(`/board?rooms=r&lastEventId=${last!.id}`));
    clients.push(back);
    expect(await back.nextJson<Frame>(5000)).toMatchObject({
      data: { recovered: true, replayed: 30 },
    });
    const data: number[] = [];
    for (let i = 0; i < 30; i++) data.push((await back.nextJson<Frame>(5000)).data);
    expect(data).toEqual(Array.from({ length: 30 }, (_, i) => i + 11));
    await a.request('send', { route: '/board', count: 1, from: 40 });
    const live = await back.nextJson<Frame>(5000);
    expect(live.data).toBe(41);
    expect(seqOf(live.id)).toBe(seqOf(last!.id) + 31);
  });
});
