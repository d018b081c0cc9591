import { ConnectionLimiter } from './connection-limiter.js';

describe('ConnectionLimiter', () => {
  it('keeps no per-IP count without a per-IP limit', () => {
    const limiter = new ConnectionLimiter(1000, Infinity);
    for (let i = 0; i < 300; i++) expect(limiter.acquire('10.0.0.1', '/a')).toBeUndefined();
    for (let i = 0; i < 100; i++) expect(limiter.acquire(`10.0.1.${i}`, '/a')).toBeUndefined();
    expect(limiter.counts).toEqual({ total: 400, ips: 0 });
    limiter.release('10.0.0.1', '/a');
    expect(limiter.counts).toEqual({ total: 399, ips: 0 });
  });

  it('counts per IP, process and route when limited, and gives slots back', () => {
    const limiter = new ConnectionLimiter(3, 2);
    expect(limiter.acquire('a', '/r', 10)).toBeUndefined();
    expect(limiter.acquire('a', '/r', 10)).toBeUndefined();
    expect(limiter.acquire('a', '/r', 10)).toBe('ip');
    expect(limiter.acquire('b', '/r', 2)).toBe('route');
    expect(limiter.acquire('b', '/s')).toBeUndefined();
    expect(limiter.acquire('c', '/s')).toBe('process');
    expect(limiter.counts).toEqual({ total: 3, ips: 2 });
    limiter.release('a', '/r');
    limiter.release('a', '/r');
    expect(limiter.counts).toEqual({ total: 1, ips: 1 });
    expect(limiter.acquire('a', '/r', 1)).toBeUndefined();
  });
});
