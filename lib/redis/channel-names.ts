import type { MembershipKind } from '../connection/ws-connection-registry.js';

/**
 * Names of the pub/sub channels of one deployment (one `keyPrefix`). Each is
 * `<prefix>:{<kind>:<name>}`: the kind letter keeps a room, a user, a route and an instance of
 * the same name apart, and the braces are a Redis Cluster hash tag, so each channel of sharded
 * pub/sub lives on the shard of its own name.
 *
 * | channel | name | subscribed by |
 * |---|---|---|
 * | everyone | `<prefix>:{a}` | every instance |
 * | control | `<prefix>:{c}` | every instance (presence, `count()` questions) |
 * | instance | `<prefix>:{i:<instanceId>}` | that instance (its connections by id, answers, probes) |
 * | route | `<prefix>:{p:<pattern>}` | instances with a connection of the route |
 * | room | `<prefix>:{r:<room>}` | instances with a member of the room |
 * | user | `<prefix>:{u:<user id>}` | instances with a connection of the user |
 * | stream | `<prefix>:{s:<pattern>}` | every instance (a recovery route's history entries) |
 *
 * A recovery route's history keys share its stream's hash tag: `<prefix>:{s:<pattern>}:e`
 * (epoch), `:n` (last seq) and `:x` (the Redis Stream).
 *
 * A `}` in a name is written `\}` (and `\` as `\\`), so the hash tag always covers the whole
 * name, and a lone surrogate (not encodable as UTF-8) as `\u{d800}`: two names never share a
 * channel.
 */
export class ChannelNames {
  readonly everyone: string;
  readonly control: string;
  private readonly head: string;

  constructor(keyPrefix: string) {
    if (/[{}]/.test(keyPrefix))
      throw new TypeError(
        `keyPrefix must not contain braces (it is outside the hash tag): ${keyPrefix}`,
      );
    this.head = `${keyPrefix}:{`;
    this.everyone = `${this.head}a}`;
    this.control = `${this.head}c}`;
  }

  /** The channel of one instance. */
  instance(instanceId: string): string {
    return `${this.head}i:${escape(instanceId)}}`;
  }

  /** The channel (and key stem) of a recovery route's history. */
  stream(route: string): string {
    return `${this.head}s:${escape(route)}}`;
  }

  /** The channel of a route, room or user. */
  member(kind: MembershipKind, name: string): string {
    return `${this.head}${KIND_LETTER[kind]}:${escape(name)}}`;
  }
}

const KIND_LETTER: Record<MembershipKind, string> = { route: 'p', room: 'r', user: 'u' };

function escape(name: string): string {
  if (name.includes('}') || name.includes('\\')) name = name.replace(/[\\}]/g, '\\$&');
  if ((name as unknown as { isWellFormed(): boolean }).isWellFormed()) return name;
  return name.replace(/\p{Cs}/gu, (unit) => `\\u{${unit.charCodeAt(0).toString(16)}}`);
}
