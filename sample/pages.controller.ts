import { Controller, Get, Header, NotFoundException, Param, StreamableFile } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { loadAssets } from './assets.js';

/**
 * The pages of the sample and their scripts, served by the Nest application itself on the
 * same port as the WebSocket routes, so the pages' WebSockets are same-origin (the default
 * origin check accepts them) and nothing else has to run. Plain controller methods: they work
 * the same on Express and on Fastify.
 */
@Controller()
export class PagesController {
  private readonly assets = loadAssets();

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  /** The live board. */
  @Get()
  @Header('Content-Type', 'text/html; charset=utf-8')
  @Header('Cache-Control', 'no-store')
  board(): string {
    return this.page('board.html');
  }

  /** The chat with rooms. */
  @Get('chat')
  @Header('Content-Type', 'text/html; charset=utf-8')
  @Header('Cache-Control', 'no-store')
  chat(): string {
    return this.page('chat.html');
  }

  /** The pages' scripts and style, and the reconnecting WebSocket library they import. */
  @Get('assets/:file')
  @Header('Cache-Control', 'no-store')
  asset(@Param('file') file: string): StreamableFile {
    const asset = this.assets.get(file);
    if (!asset || file.endsWith('.html')) throw new NotFoundException();
    return new StreamableFile(asset.body, { type: asset.type, length: asset.body.length });
  }

  /** A page, with the name of the HTTP platform that serves it filled in. */
  private page(name: string): string {
    const platform = this.adapterHost.httpAdapter.getType();
    return this.assets.get(name)!.body.toString('utf8').replaceAll('{{platform}}', platform);
  }
}
