/** Which limit an upgrade ran into. */
export type LimitExceeded = 'process' | 'route' | 'ip';

/**
 * Counts connections, including those still in their handshake, per process, route and client
 * IP. A slot is taken before any guard runs and given back when the handshake is refused or the
 * connection closes, so a flood of half-open handshakes counts against the limits too.
 * Without a per-IP limit (the default) no per-IP count is kept: a map entry per client address
 * would be memory spent on nothing.
 */
export class ConnectionLimiter {
  private total = 0;
  private readonly perRoute = new Map<string, number>();
  private readonly perIp = new Map<string, number>();

  private readonly countsIps: boolean;

  constructor(
    private readonly maxTotal: number,
    private readonly maxPerIp: number,
  ) {
    this.countsIps = maxPerIp !== Infinity;
  }

  /** Takes a slot, or says which limit is full. */
  acquire(ip: string, route: string, maxPerRoute = Infinity): LimitExceeded | undefined {
    if (this.total >= this.maxTotal) return 'process';
    if ((this.perRoute.get(route) ?? 0) >= maxPerRoute) return 'route';
    const fromIp = this.countsIps ? (this.perIp.get(ip) ?? 0) : 0;
    if (fromIp >= this.maxPerIp) return 'ip';
    this.total++;
    this.perRoute.set(route, (this.perRoute.get(route) ?? 0) + 1);
    if (this.countsIps) this.perIp.set(ip, fromIp + 1);
    return undefined;
  }

  release(ip: string, route: string): void {
    this.total--;
    decrement(this.perRoute, route);
    if (this.countsIps) decrement(this.perIp, ip);
  }

  /**
   * Connections (and handshakes) counted now; `ips` is the number of distinct client IPs
   * (always 0 without a per-IP limit).
   */
  get counts(): { total: number; ips: number } {
    return { total: this.total, ips: this.perIp.size };
  }
}

function decrement(counts: Map<string, number>, key: string): void {
  const next = (counts.get(key) ?? 0) - 1;
  if (next > 0) counts.set(key, next);
  else counts.delete(key);
}
