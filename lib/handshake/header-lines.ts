import { validateHeaderName, validateHeaderValue } from 'node:http';

/** Told about a header that was left out, and why. */
export type DroppedHeader = (name: string, reason: string) => void;

/**
 * `name: value` lines for an HTTP response head, each checked with node:http's own
 * validators, so no `\r\n` (a header injection) or invalid name ever reaches the wire. Invalid
 * headers and those in `reserved` (lower-case names the caller writes itself, such as
 * `Content-Length`) are left out and reported to `dropped`.
 */
export function headerLines(
  headers: Readonly<Record<string, string | number>>,
  reserved: ReadonlySet<string>,
  dropped: DroppedHeader,
): string[] {
  const lines: string[] = [];
  for (const name of Object.keys(headers)) {
    const value = headers[name];
    try {
      validateHeaderName(name);
    } catch (error) {
      dropped(JSON.stringify(name), (error as Error).message);
      continue;
    }
    try {
      validateHeaderValue(name, String(value));
    } catch (error) {
      // The value may be a secret (a cookie): the log names the header only.
      dropped(name, (error as Error).message);
      continue;
    }
    if (reserved.has(name.toLowerCase())) {
      dropped(name, 'the server sets this header itself');
      continue;
    }
    lines.push(`${name}: ${value}`);
  }
  return lines;
}
