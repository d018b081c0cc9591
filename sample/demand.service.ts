import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnModuleDestroy,
} from '@nestjs/common';
import { BroadcastService } from '../lib/index.js';
import { DemandRoute } from './demand.route.js';
import type { DemandItem, DemandStore } from './demand.store.js';

export type { DemandItem } from './demand.store.js';

/** Injection token of the board's {@link DemandStore}. */
export const DEMAND_STORE = Symbol('DEMAND_STORE');

/** A snapshot of the whole board; `at` tells the page how fresh it is. */
export interface DemandSnapshot {
  items: DemandItem[];
  /** The board's revision: one more at every change, whichever instance made it. */
  rev: number;
  at: string;
  /** The line someone set through `POST /api/demand`, when that is why it was pushed. */
  change?: DemandItem;
}

/** How often the simulated demand moves and is pushed to every page. */
const TICK_MS = 1000;
/** Largest change of one quantity per tick, up or down. */
const MAX_DRIFT = 3;

/**
 * The "orders" that the pages watch. Every second the quantities drift a little, as if orders
 * were coming in and being fulfilled, and the new state is pushed to every client of
 * `DemandRoute`: Tornado's `send_demand_updates` class method.
 *
 * The whole list is sent each time, with its revision. `DemandRoute` keeps the pushes for
 * replay (`recovery`): a page that was away (a train tunnel, a server restart) comes back
 * with the id of the last push it saw and gets every one it missed, in order, once.
 */
@Injectable()
export class DemandService implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(DemandService.name);
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly broadcast: BroadcastService,
    @Inject(DEMAND_STORE) private readonly store: DemandStore,
  ) {}

  /**
   * Started on bootstrap, when the WebSocket routes are being served, rather than in the
   * constructor, so no tick runs while the application is still being assembled.
   */
  onApplicationBootstrap(): void {
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    // The HTTP server keeps the process alive; the timer alone must not, or a failed start
    // or an interrupted shutdown would leave the process hanging.
    this.timer.unref();
  }

  /** Stopped before the gateway closes the connections, so no push races the shutdown. */
  async onModuleDestroy(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.store.close();
  }

  /** The current board. */
  async snapshot(): Promise<DemandSnapshot> {
    const { items, rev } = await this.store.state();
    return { items, rev, at: new Date().toISOString() };
  }

  /**
   * Sets one quantity and pushes the board right away instead of at the next tick, so a
   * change made from one page shows on every page at once.
   *
   * @returns how many pages of this process the update was written to, or `undefined` if
   * there is no such line.
   */
  async set(name: string, quantity: number): Promise<number | undefined> {
    const state = await this.store.set(name, quantity);
    if (!state) return undefined;
    return this.push({ ...state, at: new Date().toISOString(), change: { name, quantity } });
  }

  private async tick(): Promise<void> {
    try {
      const state = await this.store.drift(MAX_DRIFT);
      if (this.timer) this.push({ ...state, at: new Date().toISOString() });
    } catch (error) {
      this.logger.warn(`The board could not move: ${(error as Error).message}`);
    }
  }

  /**
   * Pushes one message to every open connection of `DemandRoute`, on every instance. It is
   * serialized once, however many pages are open.
   */
  private push(data: DemandSnapshot): number {
    return this.broadcast.toRoute(DemandRoute).send({ event: 'demand', data });
  }
}
