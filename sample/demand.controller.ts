import {
  BadRequestException,
  Body,
  Controller,
  Get,
  Header,
  HttpCode,
  NotFoundException,
  Post,
} from '@nestjs/common';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DemandService, type DemandItem } from './demand.service.js';

/** Body of `POST /api/demand`. */
export interface DemandChange {
  name: string;
  quantity: number;
}

/**
 * Where the page may be. `tsc` does not copy HTML, and the compiled controller runs from
 * `dist-sample/sample/`, so the page is read from the sources: first from the project root
 * (`npm run sample` and `nest start` run there), then relative to this file, which finds it
 * when the process was started from another directory.
 */
function pageCandidates(): string[] {
  return [
    resolve(process.cwd(), 'sample/public/index.html'),
    fileURLToPath(new URL('../../sample/public/index.html', import.meta.url)),
  ];
}

function loadPage(): string {
  const candidates = pageCandidates();
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new Error(`sample/public/index.html not found; looked at ${candidates.join(', ')}`);
  }
  return readFileSync(found, 'utf8');
}

/**
 * The HTTP side of the demand board: the page itself and a small JSON API. A change made
 * through the API is broadcast at once, which shows HTTP and WebSocket sharing one service.
 */
@Controller()
export class DemandController {
  /** Read once at start-up: a missing file fails the start, not the first visitor. */
  private readonly page = loadPage();

  constructor(private readonly demand: DemandService) {}

  @Get()
  @Header('Content-Type', 'text/html; charset=utf-8')
  // The page is edited often while trying the sample; never serve a stale copy.
  @Header('Cache-Control', 'no-store')
  index(): string {
    return this.page;
  }

  /** The current board, for the page's first paint before the first push arrives. */
  @Get('api/demand')
  list() {
    return this.demand.snapshot();
  }

  /**
   * Sets the quantity of one line and pushes the board to every page. Answers 200 rather
   * than Nest's default 201 for POST: nothing is created, an existing line changes.
   */
  @Post('api/demand')
  @HttpCode(200)
  update(@Body() body: Partial<DemandChange> | undefined): { item: DemandItem; sentTo: number } {
    const { name, quantity } = body ?? {};
    if (typeof name !== 'string' || name === '') {
      throw new BadRequestException('"name" must be a non-empty string');
    }
    if (typeof quantity !== 'number' || !Number.isInteger(quantity) || quantity < 0) {
      throw new BadRequestException('"quantity" must be a non-negative integer');
    }
    if (!this.demand.has(name)) {
      throw new NotFoundException(`No demand line named ${JSON.stringify(name)}`);
    }
    const sentTo = this.demand.set(name, quantity);
    return { item: { name, quantity }, sentTo };
  }
}
