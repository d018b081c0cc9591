import { isDeepStrictEqual } from 'node:util';
import { describeFrame, show, type WsTestFrame } from './ws-test-frame.js';

/** Marks a shape matched partially: see {@link partial}. */
export class PartialMatch {
  /** @internal */
  constructor(readonly shape: unknown) {}
}

/**
 * What a message must be:
 * - `string`: a text frame with exactly this text; `RegExp`: a text frame whose text matches;
 * - `Buffer` or `Uint8Array`: a binary frame with exactly these bytes;
 * - a function: called with the message's value (parsed JSON, else text, else bytes) and the
 *   frame; it must return `true` (`false` or nothing fails; what it throws fails as it is);
 * - {@link partial}`(shape)`: JSON that has at least the keys of `shape`, recursively;
 * - any other value (object, array, number, boolean, `null`): JSON deeply equal to it.
 *
 * Inside an object or array, a `RegExp` matches a string value, a function is a predicate on the
 * value, `partial()` matches partially, and an asymmetric matcher of jest or vitest
 * (`expect.any(String)`) is honoured.
 */
export type WsMatcher =
  | string
  | RegExp
  | Uint8Array
  | PartialMatch
  | ((value: any, frame: WsTestFrame) => boolean)
  | number
  | boolean
  | null
  | readonly unknown[]
  | { readonly [key: string]: unknown };

/**
 * A JSON shape matched partially: keys of `shape` must be there and match (nested objects
 * partially too); other keys are ignored. Arrays match element by element, same length.
 *
 * ```ts
 * await client.expectMessage(partial({ event: 'joined', data: { room: '42' } }));
 * ```
 */
export function partial(
  shape: { readonly [key: string]: unknown } | readonly unknown[],
): PartialMatch {
  return new PartialMatch(shape);
}

/** Why `frame` does not match `matcher`, or `undefined` if it does. Predicates may throw. */
export function mismatch(matcher: WsMatcher | undefined, frame: WsTestFrame): string | undefined {
  if (matcher === undefined) return undefined;
  if (typeof matcher === 'string') {
    if (frame.isBinary) return 'a binary frame instead of text';
    return frame.data === matcher ? undefined : 'different text';
  }
  if (matcher instanceof RegExp) {
    if (frame.isBinary) return 'a binary frame instead of text';
    matcher.lastIndex = 0;
    return matcher.test(frame.data as string) ? undefined : `text not matching ${matcher}`;
  }
  if (matcher instanceof Uint8Array) {
    if (!frame.isBinary) return 'a text frame instead of binary';
    return Buffer.from(matcher.buffer, matcher.byteOffset, matcher.byteLength).equals(
      frame.data as Buffer,
    )
      ? undefined
      : 'different bytes';
  }
  if (typeof matcher === 'function') {
    const result = matcher(frame.value, frame);
    if (result === true) return undefined;
    return result === false
      ? `${predicateName(matcher)} returned false`
      : `${predicateName(matcher)} returned ${show(result)}, not true`;
  }
  if (frame.isBinary) return 'a binary frame instead of JSON text';
  // A JSON string literal keeps its quotes in the text: the value is the text only when it is not JSON.
  if (frame.value === frame.data) return 'text that is not JSON';
  return mismatchValue(matcher, frame.value, '', false);
}

function mismatchValue(
  matcher: unknown,
  actual: unknown,
  path: string,
  partially: boolean,
): string | undefined {
  const at = path || 'the message';
  if (matcher instanceof PartialMatch) return mismatchValue(matcher.shape, actual, path, true);
  if (isAsymmetric(matcher)) {
    return matcher.asymmetricMatch(actual)
      ? undefined
      : `${at}: ${show(actual)} does not match ${describeAsymmetric(matcher)}`;
  }
  if (matcher instanceof RegExp) {
    if (typeof actual !== 'string')
      return `${at}: expected a string matching ${matcher}, got ${show(actual)}`;
    matcher.lastIndex = 0;
    return matcher.test(actual) ? undefined : `${at}: ${show(actual)} does not match ${matcher}`;
  }
  if (typeof matcher === 'function') {
    const result = matcher(actual);
    return result === true
      ? undefined
      : `${at}: ${predicateName(matcher)} returned ${show(result)} for ${show(actual)}`;
  }
  if (Array.isArray(matcher)) {
    if (!Array.isArray(actual)) return `${at}: expected an array, got ${show(actual)}`;
    if (actual.length !== matcher.length) {
      return `${at}: expected ${matcher.length} elements, got ${actual.length}: ${show(actual)}`;
    }
    for (let i = 0; i < matcher.length; i++) {
      const why = mismatchValue(matcher[i], actual[i], `${path}[${i}]`, partially);
      if (why) return why;
    }
    return undefined;
  }
  if (isPlainObject(matcher)) {
    if (!isPlainObject(actual)) return `${at}: expected an object, got ${show(actual)}`;
    for (const key of Object.keys(matcher)) {
      const keyPath = `${path}.${key}`;
      if (!Object.hasOwn(actual, key))
        return `${keyPath}: missing (expected ${show(matcher[key])})`;
      const why = mismatchValue(matcher[key], actual[key], keyPath, partially);
      if (why) return why;
    }
    if (!partially) {
      const extra = Object.keys(actual).filter((key) => !Object.hasOwn(matcher, key));
      if (extra.length > 0)
        return `${at}: unexpected key ${extra.map((key) => show(key)).join(', ')}`;
    }
    return undefined;
  }
  return isDeepStrictEqual(matcher, actual)
    ? undefined
    : `${at}: expected ${show(matcher)}, got ${show(actual)}`;
}

/** The matcher as a failure names it. */
export function describeMatcher(matcher: WsMatcher | undefined): string {
  if (matcher === undefined) return 'a message';
  if (typeof matcher === 'string')
    return describeFrame({ isBinary: false, data: matcher, value: matcher, at: 0 });
  if (matcher instanceof RegExp) return `text matching ${matcher}`;
  if (matcher instanceof Uint8Array) {
    const data = Buffer.from(matcher.buffer, matcher.byteOffset, matcher.byteLength);
    return describeFrame({ isBinary: true, data, value: data, at: 0 });
  }
  if (typeof matcher === 'function') return `a message ${predicateName(matcher)} accepts`;
  if (matcher instanceof PartialMatch) return `JSON like partial(${show(matcher.shape)})`;
  return `JSON ${show(matcher)}`;
}

/** A matcher of an event's `data` as a failure names it (a string there is a JSON string). */
export function describeDataMatcher(matcher: WsMatcher): string {
  if (typeof matcher === 'function') return `${predicateName(matcher)} accepts`;
  if (matcher instanceof RegExp) return `matching ${matcher}`;
  if (matcher instanceof PartialMatch) return `like partial(${show(matcher.shape)})`;
  return show(matcher);
}

function predicateName(fn: Function): string {
  return fn.name ? `the predicate ${fn.name}()` : 'the predicate';
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

interface AsymmetricMatcher {
  asymmetricMatch(actual: unknown): boolean;
  toAsymmetricMatcher?(): string;
}

function describeAsymmetric(matcher: AsymmetricMatcher): string {
  return matcher.toAsymmetricMatcher?.() ?? String(matcher);
}

function isAsymmetric(value: unknown): value is AsymmetricMatcher {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof (value as { asymmetricMatch?: unknown }).asymmetricMatch === 'function'
  );
}

/** Why an event's `data` does not match `matcher` (a predicate also gets the frame). */
export function mismatchEventData(
  matcher: WsMatcher | undefined,
  data: unknown,
  frame: WsTestFrame,
): string | undefined {
  if (matcher === undefined) return undefined;
  if (typeof matcher === 'function') {
    const result = matcher(data, frame);
    return result === true ? undefined : `${predicateName(matcher)} returned ${show(result)}`;
  }
  return mismatchValue(matcher, data, '.data', false);
}
