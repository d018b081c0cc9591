/** Which limit an upgrade ran into. */
export type LimitExceeded = 'process' | 'route' | 'ip';

/**
 * Counts connections, including those still in their handshake, per process, route and client
 * IP. A slot is taken before any guard runs and given back when the handshake is refused or the
 * connection closes, so a flood of half-open handshakes counts against the limits too.
 */
export class ConnectionLimiter {
  private total = 0;
  private readonly perRoute = new Map<string, number>();
  private readonly perIp = new Map<string, number>();

  constructor(
    private readonly maxTotal: number,
    private readonly maxPerIp: number,
  ) {}

  /** Takes a slot, or says which limit is full. */
  acquire(ip: string, route: string, maxPerRoute = Infinity): LimitExceeded | undefined {
    if (this.total >= this.maxTotal) return 'process';
    if ((this.perRoute.get(route) ?? 0) >= maxPerRoute) return 'route';
    if ((this.perIp.get(ip) ?? 0) >= this.maxPerIp) return 'ip';
    this.total++;
    this.perRoute.set(route, (this.perRoute.get(route) ?? 0) + 1);
    this.perIp.set(ip, (this.perIp.get(ip) ?? 0) + 1);
    return undefined;
  }

  release(ip: string, route: string): void {
    this.total--;
    decrement(this.perRoute, route);
    decrement(this.perIp, ip);
  }

  /** Connections (and handshakes) counted now; `ips` is the number of distinct client IPs. */
  get counts(): { total: number; ips: number } {
    return { total: this.total, ips: this.perIp.size };
  }
}

function decrement(counts: Map<string, number>, key: string): void {
  const next = (counts.get(key) ?? 0) - 1;
  if (next > 0) counts.set(key, next);
  else counts.delete(key);
}
