import 'reflect-metadata';
import { Module, type INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
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
import { closeWsTestClients, partial, wsTestClient } from '../../lib/testing/index.js';
import { delay, eventually } from '../utils/ws-client.js';

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
  let app: INestApplication;
  beforeAll(async () => {
    // Not listening: the testing kit listens on 127.0.0.1 and a free port.
    app = await NestFactory.create(AppModule, { logger: false });
  });
  afterEach(() => closeWsTestClients());
  afterAll(() => app.close());

  it('echoes text as text and binary as binary', async () => {
    const client = await wsTestClient(app, '/echo');
    client.send('hello');
    await client.expectMessage('got: hello');
    client.send(Buffer.from([0, 255, 7]));
    // A Buffer matches a binary frame with exactly these bytes.
    await client.expectMessage(Buffer.from([...Buffer.from('bin:'), 0, 255, 7]));
    await client.close();
  });

  it('passes path params, query and headers, and sends the @OnOpen return value', async () => {
    const client = await wsTestClient(app, '/items/42?tag=red', {
      headers: { 'x-test': 'yes' },
    });
    await client.expectMessage({
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
    const client = await wsTestClient(app, '/items/1');
    await client.expectMessage(); // welcome
    client.emit('promise', 50);
    client.emit('object', { x: [1, 2] });
    client.emit('nothing');
    client.emit('text');
    client.emit('bytes');
    client.emit('field', { name: 'ada' });
    client.emit('of');
    await client.expectMessage('slept 50');
    await client.expectMessage({ echoed: { x: [1, 2] } });
    await client.expectMessage('plain text');
    await client.expectMessage(new Uint8Array([1, 2, 3]));
    await client.expectMessage('name=ada');
    await client.expectMessage({ a: 1 });
    await client.expectNothing(100);
    await client.close();
  });

  it('streams every value of an Observable', async () => {
    const client = await wsTestClient(app, '/items/1');
    await client.expectMessage();
    client.emit('stream');
    await client.expectMessage('one');
    await client.expectMessage('two');
    await client.close();
  });

  it('unsubscribes a reply stream when the connection closes', async () => {
    const client = await wsTestClient(app, '/items/1');
    await client.expectMessage();
    client.emit('ticks');
    await client.expectMessage('0');
    await client.expectMessage('1');
    await client.close();
    await eventually(() => teardowns.includes('ticks'));
  });

  it('answers a WsException with the Nest 12 exception message and stays open', async () => {
    const client = await wsTestClient(app, '/items/1');
    await client.expectMessage();
    client.emit('ws-error', 5);
    await client.expectMessage({
      event: 'exception',
      data: {
        status: 'error',
        message: 'not allowed here',
        cause: { pattern: 'ws-error', data: 5 },
      },
    });
    client.emit('text');
    await client.expectMessage('plain text');
    await client.close();
  });

  it('answers an unexpected error generically, without stack, and other clients are unaffected', async () => {
    const other = await wsTestClient(app, '/echo');
    const client = await wsTestClient(app, '/items/1');
    await client.expectMessage();
    client.emit('bug');
    await client.expectMessage((reply, frame) => {
      expect(reply).toEqual({
        event: 'exception',
        data: { status: 'error', message: 'Internal server error', cause: { pattern: 'bug' } },
      });
      expect(frame.data).not.toContain('secret');
      expect(frame.data).not.toContain('at ');
      return true;
    });
    client.emit('text');
    await client.expectMessage('plain text');
    other.send('still here');
    await other.expectMessage('got: still here');
    await Promise.all([client.close(), other.close()]);
  });

  it('answers malformed JSON and unknown events on an event-only route, and stays open', async () => {
    const client = await wsTestClient(app, '/items/1');
    await client.expectMessage();
    client.send('{not json');
    await client.expectEvent('exception', partial({ message: /Malformed message/ }));
    client.emit('nope');
    await client.expectEvent('exception', partial({ message: 'Unknown event "nope"' }));
    client.emit('text');
    await client.expectMessage('plain text');
    await client.close();
  });
});
