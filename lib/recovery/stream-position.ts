/** A position in a route's stream: `<epoch>.<seq>`. */
export interface StreamPosition {
  epoch: string;
  seq: number;
}

/** The id frames carry: `<epoch>.<seq>`. */
export function formatPosition(epoch: string, seq: number): string {
  return `${epoch}.${seq}`;
}

/** Reads `<epoch>.<seq>`; `undefined` if it is not one. */
export function parsePosition(id: unknown): StreamPosition | undefined {
  if (typeof id !== 'string' || id.length > 64) return undefined;
  const dot = id.lastIndexOf('.');
  if (dot <= 0) return undefined;
  const digits = id.slice(dot + 1);
  if (!/^\d{1,15}$/.test(digits)) return undefined;
  return { epoch: id.slice(0, dot), seq: Number(digits) };
}
