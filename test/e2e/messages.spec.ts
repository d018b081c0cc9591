import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { Observable, of } from 'rxjs';
import {
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsException,
  WsHeaders,
  WsParam,
  WsQuery,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

@WsRoute('/echo')
class EchoRoute {
  @OnMessage()
  echo(@MessageBody() body: string | Buffer) {
    return Buffer.isBuffer(body) ? Buffer.concat([Buffer.from('bin:'), body]) : `got: ${body}`;
  }
}

@WsRoute('/items/:id')
class ItemsRoute {
  @OnOpen()
  open(
    @ConnectedSocket() conn: WsConnection,
    @WsParam('id') id: string,
    @WsQuery('tag') tag: string,
    @WsHeaders('x-test') header: string,
  ) {
    return { id, tag, header, params: conn.params, path: conn.path, route: conn.route };
  }

  @OnMessage('object') object(@MessageBody() data: unknown) {
    return { echoed: data };
  }
  @OnMessage('text') text() {
    return 'plain text';
  }
  @OnMessage('bytes') bytes() {
    return new Uint8Array([1, 2, 3]);
  }
  @OnMessage('nothing') nothing() {
    return undefined;
  }
  @OnMessage('promise') async promise(@MessageBody() ms: number) {
    await delay(ms);
    return `slept ${ms}`;
  }
  @OnMessage('stream') stream() {
    return new Observable<string>((subscriber) => {
      subscriber.next('one');
      setTimeout(() => subscriber.next('two'), 10);
      setTimeout(() => subscriber.complete(), 20);
    });
  }
  @OnMessage('field') field(@MessageBody('name') name: string) {
    return `name=${name}`;
  }
  @OnMessage('ws-error') wsError() {
    throw new WsException('not allowed here');
  }
  @OnMessage('bug') bug() {
    throw new Error('secret internal detail');
  }
  @OnMessage('of') ofValue() {
    return of({ a: 1 });
  }
  @OnMessage('ticks') ticks() {
    return new Observable<number>((subscriber) => {
      let n = 0;
      const timer = setInterval(() => subscriber.next(n++), 5);
      return () => {
        clearInterval(timer);
        teardowns.push('ticks');
      };
    });
  }
}

const teardowns: string[] = [];

@Module({ imports: [WsRoutesModule.forRoot({})], providers: [EchoRoute, ItemsRoute] })
class AppModule {}

describe('messages and replies', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp(AppModule);
  });
  afterAll(() => t.app.close());

  it('echoes text as text and binary as binary', async () => {
    const client = await TestClient.open(t.url('/echo'));
    client.send('hello');
    expect(await client.next()).toBe('got: hello');
    client.send(Buffer.from([0, 255, 7]));
    const reply = await client.next();
    expect(Buffer.isBuffer(reply)).toBe(true);
    expect([...(reply as Buffer)]).toEqual([...Buffer.from('bin:'), 0, 255, 7]);
    await client.close();
  });

  it('passes path params, query and headers, and sends the @OnOpen return value', async () => {
    const client = await TestClient.open(t.url('/items/42?tag=red'), undefined, {
      headers: { 'x-test': 'yes' },
    });
    expect(await client.nextJson()).toEqual({
      id: '42',
      tag: 'red',
      header: 'yes',
      params: { id: '42' },
      path: '/items/42',
      route: '/items/:id',
    });
    await client.close();
  });

  it('encodes return values by type and keeps reply order across async handlers', async () => {
    const client = await TestClient.open(t.url('/items/1'));
    await client.next(); // welcome
    client.emit('promise', 50);
    client.emit('object', { x: [1, 2] });
    client.emit('nothing');
    client.emit('text');
    client.emit('bytes');
    client.emit('field', { name: 'ada' });
    client.emit('of');
    expect(await client.next()).toBe('slept 50');
    expect(await client.nextJson()).toEqual({ echoed: { x: [1, 2] } });
    expect(await client.next()).toBe('plain text');
    expect([...((await client.next()) as Buffer)]).toEqual([1, 2, 3]);
    expect(await client.next()).toBe('name=ada');
    expect(await client.nextJson()).toEqual({ a: 1 });
    expect(await client.silentFor(100)).toBe(true);
    await client.close();
  });

  it('streams every value of an Observable', async () => {
    const client = await TestClient.open(t.url('/items/1'));
    await client.next();
    client.emit('stream');
    expect(await client.next()).toBe('one');
    expect(await client.next()).toBe('two');
    await client.close();
  });

  it('unsubscribes a reply stream when the connection closes', async () => {
    const client = await TestClient.open(t.url('/items/1'));
    await client.next();
    client.emit('ticks');
    expect(await client.next()).toBe('0');
    expect(await client.next()).toBe('1');
    await client.close();
    await eventually(() => teardowns.includes('ticks'));
  });

  it('answers a WsException with the Nest 12 exception message and stays open', async () => {
    const client = await TestClient.open(t.url('/items/1'));
    await client.next();
    client.emit('ws-error', 5);
    expect(await client.nextJson()).toEqual({
      event: 'exception',
      data: {
        status: 'error',
        message: 'not allowed here',
        cause: { pattern: 'ws-error', data: 5 },
      },
    });
    client.emit('text');
    expect(await client.next()).toBe('plain text');
    await client.close();
  });

  it('answers an unexpected error generically, without stack, and other clients are unaffected', async () => {
    const other = await TestClient.open(t.url('/echo'));
    const client = await TestClient.open(t.url('/items/1'));
    await client.next();
    client.emit('bug');
    const raw = (await client.next()) as string;
    expect(JSON.parse(raw)).toEqual({
      event: 'exception',
      data: { status: 'error', message: 'Internal server error', cause: { pattern: 'bug' } },
    });
    expect(raw).not.toContain('secret');
    expect(raw).not.toContain('at ');
    client.emit('text');
    expect(await client.next()).toBe('plain text');
    other.send('still here');
    expect(await other.next()).toBe('got: still here');
    await Promise.all([client.close(), other.close()]);
  });

  it('answers malformed JSON and unknown events on an event-only route, and stays open', async () => {
    const client = await TestClient.open(t.url('/items/1'));
    await client.next();
    client.send('{not json');
    expect((await client.nextJson()).data.message).toMatch(/Malformed message/);
    client.emit('nope');
    expect((await client.nextJson()).data.message).toBe('Unknown event "nope"');
    client.emit('text');
    expect(await client.next()).toBe('plain text');
    await client.close();
  });
});
