/**
 * The other instances this one knows to be up: each says hello on the control channel every
 * heartbeat interval; one not heard from for three intervals (or that said goodbye) is gone.
 */
export class InstanceDirectory {
  private readonly lastSeen = new Map<string, number>();

  constructor(
    private readonly self: string,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * An instance said hello: it is up, with this heartbeat interval. `true` if it was not known
   * to be up (it is new, or came back), so it may not know this one either.
   */
  seen(instance: string, interval: number): boolean {
    if (instance === this.self) return false;
    const time = this.now();
    const known = (this.lastSeen.get(instance) ?? -Infinity) >= time;
    this.lastSeen.set(instance, time + 3 * interval);
    return !known;
  }

  /** An instance said goodbye. */
  gone(instance: string): void {
    this.lastSeen.delete(instance);
  }

  /** Ids of the other instances heard from recently. */
  up(): string[] {
    const time = this.now();
    const up: string[] = [];
    for (const [instance, expires] of this.lastSeen) {
      if (expires >= time) up.push(instance);
      else this.lastSeen.delete(instance);
    }
    return up;
  }

  /** Forgets everybody (after a reconnect, presence is learnt again). */
  clear(): void {
    this.lastSeen.clear();
  }
}
