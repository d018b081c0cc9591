import { connectHost, joinUrl } from './test-target.js';

describe('the address a test client connects to', () => {
  it('reaches a server bound to every interface on loopback, and brackets IPv6', () => {
    expect(connectHost({ address: '0.0.0.0', family: 'IPv4', port: 1 })).toBe('127.0.0.1');
    expect(connectHost({ address: '::', family: 'IPv6', port: 1 })).toBe('[::1]');
    expect(connectHost({ address: '::1', family: 'IPv6', port: 1 })).toBe('[::1]');
    expect(connectHost({ address: '127.0.0.1', family: 'IPv4', port: 1 })).toBe('127.0.0.1');
  });

  it('joins a path with its query, and refuses one without a leading slash', () => {
    expect(joinUrl('ws://127.0.0.1:1', '/a/b?c=1')).toBe('ws://127.0.0.1:1/a/b?c=1');
    expect(() => joinUrl('ws://127.0.0.1:1', 'a')).toThrow('the path must start with "/"');
  });
});
