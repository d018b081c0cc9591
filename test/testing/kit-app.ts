import 'reflect-metadata';
import {
  Injectable,
  Module,
  UnauthorizedException,
  UseGuards,
  type CanActivate,
  type DynamicModule,
  type ExecutionContext,
} from '@nestjs/common';
import {
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsHeaders,
  WsRoute,
  WsRoutesModule,
  type HandshakeRequest,
  type WsRoutesModuleOptions,
} from '../../lib/index.js';

/** Sends back exactly what it got: text as text, bytes as bytes. */
@WsRoute('/echo')
export class EchoRoute {
  @OnMessage() echo(@MessageBody() body: string | Buffer) {
    return body;
  }
}

/** Tells the client what its upgrade request said, then answers events. */
@WsRoute('/events', { subprotocols: ['kit.v2', 'kit.v1'], origins: ['http://app.test'] })
export class EventsRoute {
  @OnOpen() open(
    @ConnectedSocket() conn: WsConnection,
    @WsHeaders() headers: Record<string, string>,
  ) {
    return {
      event: 'welcome',
      data: {
        protocol: conn.protocol,
        origin: headers.origin,
        probe: headers['x-probe'],
        query: conn.query,
      },
    };
  }
  @OnMessage('ping') ping(@MessageBody() data: unknown) {
    return { event: 'pong', data };
  }
  @OnMessage('kick') kick(@ConnectedSocket() conn: WsConnection, @MessageBody() reason: string) {
    conn.close(4000, reason);
  }
  @OnMessage('later') later(@ConnectedSocket() conn: WsConnection, @MessageBody() ms: number) {
    setTimeout(() => conn.send({ event: 'late', data: ms }), ms);
  }
  @OnMessage('many') many(@ConnectedSocket() conn: WsConnection, @MessageBody() count: number) {
    for (let i = 0; i < count; i++) conn.send({ event: 'n', data: i });
  }
}

@Injectable()
export class TokenGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<HandshakeRequest>();
    if (request.query.token !== 'secret') throw new UnauthorizedException('Token required');
    return true;
  }
}

@WsRoute('/guarded')
@UseGuards(TokenGuard)
export class GuardedRoute {
  @OnOpen() open() {
    return 'in';
  }
}

/** The same guard, refusing by close: a 101 closed at once with 4000 + status. */
@WsRoute('/close-refused', { refuse: 'close' })
@UseGuards(TokenGuard)
export class CloseRefusedRoute {
  @OnOpen() open() {
    return 'in';
  }
}

/** The kit's test application; `options` go to `WsRoutesModule.forRoot()`. */
@Module({})
export class KitAppModule {
  static with(options: WsRoutesModuleOptions = {}): DynamicModule {
    return {
      module: KitAppModule,
      imports: [WsRoutesModule.forRoot(options)],
      providers: [EchoRoute, EventsRoute, GuardedRoute, CloseRefusedRoute, TokenGuard],
    };
  }
}

/** The module with no route at all. */
@Module({ imports: [WsRoutesModule.forRoot()] })
export class NoRoutesModule {}

/** A module without WsRoutesModule. */
@Module({})
export class PlainModule {}
