import { Injectable } from '@nestjs/common';

/**
 * The rooms of the connections to come, in their order of arrival: the orchestrator of the
 * Redis bench plans which rooms each instance's connections join, so it knows every room's
 * members per instance without asking.
 */
@Injectable()
export class RoomPlan {
  private rooms: string[][] = [];
  private next = 0;

  /** Replaces the plan: the k-th connection to open from now on joins `rooms[k]`. */
  set(rooms: string[][]): void {
    this.rooms = rooms;
    this.next = 0;
  }

  /** The rooms of the connection that just opened (none past the end of the plan). */
  take(): string[] {
    return this.rooms[this.next++] ?? [];
  }

  /** Connections that took their rooms since the plan was set. */
  get taken(): number {
    return Math.min(this.next, this.rooms.length);
  }
}
