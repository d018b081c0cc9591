import { RouteMatcher } from './route-matcher.js';

const route = (pattern: string) => ({ pattern });

describe('RouteMatcher', () => {
  const matcher = new RouteMatcher<{ pattern: string }>();
  matcher.add(route('/live'));
  matcher.add(route('/rooms/:room'));
  matcher.add(route('/feed{/:topic}'));
  matcher.add(route('/files/*rest'));

  it('matches static paths with or without a trailing slash', () => {
    expect(matcher.match('/live')).toEqual({ route: { pattern: '/live' }, params: {} });
    expect(matcher.match('/live/')?.route.pattern).toBe('/live');
    expect(matcher.match('/liv')).toBeUndefined();
  });

  it('matches static and parameterised patterns case-sensitively', () => {
    expect(matcher.match('/LIVE')).toBeUndefined();
    expect(matcher.match('/ROOMS/lobby')).toBeUndefined();
    expect(matcher.match('/rooms/Lobby')?.params).toEqual({ room: 'Lobby' });
  });

  it('decodes parameters', () => {
    expect(matcher.match('/rooms/caf%C3%A9')?.params).toEqual({ room: 'café' });
    expect(matcher.match('/rooms/a/b')).toBeUndefined();
  });

  it('supports optional parts and joins wildcards into one string', () => {
    expect(matcher.match('/feed')?.params).toEqual({});
    expect(matcher.match('/feed/news')?.params).toEqual({ topic: 'news' });
    expect(matcher.match('/files/a/b/c.txt')?.params).toEqual({ rest: 'a/b/c.txt' });
  });

  it('throws URIError on a malformed escape, for the gateway to answer 400', () => {
    expect(() => matcher.match('/rooms/%E0%A4%A')).toThrow(URIError);
  });

  it('refuses two routes with one pattern', () => {
    expect(() => matcher.add(route('/live'))).toThrow(/same path/);
  });
});
