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

  /** An instance said hello (or sent anything): it is up, with this heartbeat interval. */
  seen(instance: string, interval: number): void {
    if (instance === this.self) return;
    this.lastSeen.set(instance, this.now() + 3 * interval);
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
