// The README's "Testing" example: the code between the markers is printed there, with the
// package's import paths (the last test below checks that both say the same).
import 'reflect-metadata';
import { readFileSync } from 'node:fs';
// README:begin
import {
  Injectable,
  Module,
  UnauthorizedException,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
  type INestApplication,
} from '@nestjs/common';
import { Test } from '@nestjs/testing';
import {
  BroadcastService,
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsParam,
  WsRoute,
  WsRoutesModule,
  type HandshakeRequest,
} from '../../lib/index.js';
import { closeWsTestClients, expectRefused, wsTestClient } from '../../lib/testing/index.js';

const USERS: Record<string, string> = {
  'token-ada': 'ada',
  'token-bob': 'bob',
  'token-eve': 'eve',
};

@Injectable()
class TokenGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<HandshakeRequest>();
    const name = USERS[request.headers.authorization?.replace(/^Bearer /, '') ?? ''];
    if (!name) throw new UnauthorizedException('Token required');
    request.user = { name }; // becomes conn.user
    return true;
  }
}

@WsRoute('/rooms/:room')
@UseGuards(TokenGuard)
class RoomRoute {
  constructor(private readonly broadcast: BroadcastService) {}

  @OnOpen() join(@ConnectedSocket() conn: WsConnection, @WsParam('room') room: string) {
    conn.join(room);
    return { event: 'joined', data: { room } };
  }

  @OnMessage('say') say(@ConnectedSocket() conn: WsConnection, @MessageBody() text: string) {
    const from = (conn.user as { name: string }).name;
    this.broadcast.to(conn.params.room).except(conn).send({ event: 'said', data: { from, text } });
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [RoomRoute, TokenGuard] })
class ChatModule {}

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

describe('RoomRoute', () => {
  let app: INestApplication;
  beforeAll(async () => {
    const moduleRef = await Test.createTestingModule({ imports: [ChatModule] }).compile();
    // Not listening: the kit listens on 127.0.0.1 and a free port; app.close() closes it.
    app = moduleRef.createNestApplication({ logger: false });
  });
  afterEach(() => closeWsTestClients()); // even when a test failed half-way
  afterAll(() => app.close());

  it('refuses an upgrade without a valid token, with 401 and Nest’s error body', async () => {
    await expectRefused(app, '/rooms/42', 401, {
      body: { statusCode: 401, message: 'Token required', error: 'Unauthorized' },
    });
    await expectRefused(app, '/rooms/42', 401, as('forged'));
  });

  it('broadcasts a line to the rest of the room only', async () => {
    const ada = await wsTestClient(app, '/rooms/42', as('token-ada'));
    const bob = await wsTestClient(app, '/rooms/42', as('token-bob'));
    const eve = await wsTestClient(app, '/rooms/7', as('token-eve'));
    await ada.expectEvent('joined', { room: '42' });
    await bob.expectEvent('joined', { room: '42' });
    await eve.expectEvent('joined', { room: '7' });

    ada.emit('say', 'hello');
    await bob.expectEvent('said', { from: 'ada', text: 'hello' });
    await ada.expectNothing(100); // not back to the sender
    await eve.expectNothing(100); // not to another room
  });
});
// README:end

describe('the README', () => {
  it('prints this example as it is here', () => {
    const source = readFileSync(new URL(import.meta.url), 'utf8');
    const example = source
      .slice(source.indexOf('// README:begin\n') + 16, source.indexOf('// README:end'))
      .replace("'../../lib/index.js'", "'nestjs-ws-routes'")
      .replace("'../../lib/testing/index.js'", "'nestjs-ws-routes/testing'");
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('## Testing'));
    const block = section.slice(
      section.indexOf('```ts\n') + 6,
      section.indexOf('```\n', section.indexOf('```ts\n') + 6),
    );
    expect(block).toBe(example);
  });
});
