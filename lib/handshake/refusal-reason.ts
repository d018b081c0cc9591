import { STATUS_CODES, type IncomingMessage } from 'node:http';

/**
 * Query values this long or longer are treated as possible secrets (a token, a session id, an
 * API key): a refusal message that repeats one is replaced. Shorter ones (`?room=lobby`) are
 * too common in ordinary words to tell apart, and too short to be a credential.
 */
const SECRET_LENGTH = 8;

/**
 * The text of a refusal, for the log line and a close reason: the message itself, or the
 * `message` of an `HttpException` response (a list joined with `; `), or the status text.
 * A text that repeats a value of the request's query string (`?token=…`, raw or decoded) is
 * replaced by the status text, so a guard that echoes the token puts it neither in the logs
 * nor in a close reason a page's error reporting may collect. Not truncated.
 */
export function refusalText(
  status: number,
  message: string | object,
  request: IncomingMessage,
): string {
  const generic = STATUS_CODES[status] ?? 'Error';
  const text = messageOf(message) || generic;
  return repeatsQueryValue(text, request) ? generic : text;
}

function messageOf(message: string | object): string {
  if (typeof message === 'string') return message;
  const inner = (message as { message?: unknown }).message;
  if (typeof inner === 'string') return inner;
  if (Array.isArray(inner) && inner.every((item) => typeof item === 'string'))
    return inner.join('; ');
  return '';
}

function repeatsQueryValue(text: string, request: IncomingMessage): boolean {
  const url = request.url ?? '';
  const start = url.indexOf('?');
  if (start === -1) return false;
  const search = url.slice(start + 1);
  for (const pair of search.split('&')) {
    const raw = pair.slice(pair.indexOf('=') + 1);
    if (raw.length >= SECRET_LENGTH && text.includes(raw)) return true;
  }
  for (const value of new URLSearchParams(search).values()) {
    if (value.length >= SECRET_LENGTH && text.includes(value)) return true;
  }
  return false;
}
