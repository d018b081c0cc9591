/**
 * Packets seen lately, by origin and serial: a packet published to several channels (a room
 * and a user, two rooms) reaches an instance subscribed to more than one of them several
 * times, and is delivered once. Two generations of sets, swapped every `window` ms, keep the
 * memory bounded by the traffic of two windows.
 */
export class RecentPackets {
  private current = new Set<string>();
  private previous = new Set<string>();
  private swappedAt = 0;

  constructor(
    private readonly window = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** `true` the first time a packet is seen within the window, `false` after. */
  firstTime(origin: string, serial: number): boolean {
    const time = this.now();
    if (time - this.swappedAt >= this.window) {
      this.previous = this.current;
      this.current = new Set();
      this.swappedAt = time;
    }
    const key = `${origin}:${serial}`;
    if (this.current.has(key) || this.previous.has(key)) return false;
    this.current.add(key);
    return true;
  }
}
