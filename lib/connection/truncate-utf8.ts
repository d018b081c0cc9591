/**
 * A close reason is limited to 123 bytes of UTF-8 (RFC 6455 §5.5: a control frame payload is
 * at most 125 bytes, two of which hold the code). Cut at a character boundary, never mid-sequence.
 */
export function truncateCloseReason(reason: string, maxBytes = 123): string {
  if (Buffer.byteLength(reason) <= maxBytes) {
    return reason;
  }
  let out = '';
  let bytes = 0;
  for (const char of reason) {
    const size = Buffer.byteLength(char);
    if (bytes + size > maxBytes) break;
    out += char;
    bytes += size;
  }
  return out;
}
