import {
  BadRequestException,
  Body,
  Controller,
  Get,
  HttpCode,
  NotFoundException,
  Post,
} from '@nestjs/common';
import { DemandService, type DemandItem } from './demand.service.js';

/** Body of `POST /api/demand`. */
export interface DemandChange {
  name: string;
  quantity: number;
}

/**
 * The HTTP side of the live board: a small JSON API. A change made through the API is
 * broadcast at once, which shows HTTP and WebSocket sharing one service:
 *
 *     curl -X POST localhost:3000/api/demand -H 'Content-Type: application/json' \
 *          -d '{"name":"Apples","quantity":99}'
 */
@Controller('api/demand')
export class DemandController {
  constructor(private readonly demand: DemandService) {}

  /** The current board, for the page's first paint before the first push arrives. */
  @Get()
  list() {
    return this.demand.snapshot();
  }

  /**
   * Sets the quantity of one line and pushes the board to every page. Answers 200 rather
   * than Nest's default 201 for POST: nothing is created, an existing line changes.
   */
  @Post()
  @HttpCode(200)
  async update(
    @Body() body: Partial<DemandChange> | undefined,
  ): Promise<{ item: DemandItem; sentTo: number }> {
    const { name, quantity } = body ?? {};
    if (typeof name !== 'string' || name === '') {
      throw new BadRequestException('"name" must be a non-empty string');
    }
    if (typeof quantity !== 'number' || !Number.isInteger(quantity) || quantity < 0) {
      throw new BadRequestException('"quantity" must be a non-negative integer');
    }
    const sentTo = await this.demand.set(name, quantity);
    if (sentTo === undefined) {
      throw new NotFoundException(`No demand line named ${JSON.stringify(name)}`);
    }
    return { item: { name, quantity }, sentTo };
  }
}
