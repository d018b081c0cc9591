import { Injectable, type OnApplicationBootstrap, type OnModuleDestroy } from '@nestjs/common';
import { BroadcastService } from '../lib/index.js';
import { DemandRoute } from './demand.route.js';

/** One line of the demand board. */
export interface DemandItem {
  name: string;
  quantity: number;
}

/** A snapshot of the whole board; `at` tells the page how fresh it is. */
export interface DemandSnapshot {
  items: DemandItem[];
  at: string;
  /** The line someone set through `POST /api/demand`, when that is why it was pushed. */
  change?: DemandItem;
}

/** How often the simulated demand moves and is pushed to every page. */
const TICK_MS = 1000;
/** Largest change of one quantity per tick, up or down. */
const MAX_DRIFT = 3;

/**
 * The in-memory "orders" that the pages watch. Every second the quantities drift a little, as
 * if orders were coming in and being fulfilled, and the new state is pushed to every client
 * of `DemandRoute`: Tornado's `send_demand_updates` class method.
 *
 * The whole list is sent each time, not a diff: it is five lines, and a page that missed a
 * message (it was reconnecting) is correct again with the next one.
 */
@Injectable()
export class DemandService implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly items = new Map<string, number>([
    ['Apples', 40],
    ['Bread', 25],
    ['Coffee', 12],
    ['Milk', 30],
    ['Rice', 18],
  ]);
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly broadcast: BroadcastService) {}

  /**
   * Started on bootstrap, when the WebSocket routes are being served, rather than in the
   * constructor, so no tick runs while the application is still being assembled.
   */
  onApplicationBootstrap(): void {
    this.timer = setInterval(() => {
      this.drift();
      this.sendDemandUpdates();
    }, TICK_MS);
    // The HTTP server keeps the process alive; the timer alone must not, or a failed start
    // or an interrupted shutdown would leave the process hanging.
    this.timer.unref();
  }

  /** Stopped before the gateway closes the connections, so no push races the shutdown. */
  onModuleDestroy(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The current board. */
  snapshot(): DemandSnapshot {
    const items = [...this.items].map(([name, quantity]) => ({ name, quantity }));
    return { items, at: new Date().toISOString() };
  }

  /** Whether the board has a line with this name. */
  has(name: string): boolean {
    return this.items.has(name);
  }

  /**
   * Sets one quantity and pushes the board right away instead of at the next tick, so a
   * change made from one page shows on every page at once.
   *
   * @returns how many pages of this process the update was written to.
   */
  set(name: string, quantity: number): number {
    this.items.set(name, quantity);
    return this.sendDemandUpdates({ name, quantity });
  }

  /**
   * Pushes one message to every open connection of `DemandRoute`. It is serialized once,
   * however many pages are open, and a page that is connecting or closing is skipped.
   */
  sendDemandUpdates(change?: DemandItem): number {
    const data: DemandSnapshot = change ? { ...this.snapshot(), change } : this.snapshot();
    return this.broadcast.toRoute(DemandRoute).send({ event: 'demand', data });
  }

  private drift(): void {
    for (const [name, quantity] of this.items) {
      const change = Math.floor(Math.random() * (2 * MAX_DRIFT + 1)) - MAX_DRIFT;
      this.items.set(name, Math.max(0, quantity + change));
    }
  }
}
