import { RecoveryStream } from './recovery-stream.js';
import { formatPosition, parsePosition } from './stream-position.js';

describe('RecoveryStream', () => {
  let now = 1_000_000;
  const clock = () => now;
  const payload = (n: number) => Buffer.from(String(n));

  it('gives gapless seqs and every entry after a position, in order', () => {
    const stream = new RecoveryStream(60_000, 5, clock);
    for (let n = 1; n <= 4; n++) expect(stream.append({ payload: payload(n) }).seq).toBe(n);
    const read = stream.after(1);
    expect(read.ok && read.entries.map((e) => e.seq)).toEqual([2, 3, 4]);
    expect(stream.after(4)).toEqual({ ok: true, entries: [] });
    expect(stream.after(5)).toEqual({ ok: false, reason: 'unknown_position' });
    expect(stream.after(-1)).toEqual({ ok: false, reason: 'unknown_position' });
  });

  it('tells too_many (the ring overflowed) from too_old (the window passed)', () => {
    const stream = new RecoveryStream(60_000, 3, clock);
    for (let n = 1; n <= 5; n++) stream.append({ payload: payload(n) });
    expect(stream.after(1)).toEqual({ ok: false, reason: 'too_many' });
    const fine = stream.after(2);
    expect(fine.ok && fine.entries.map((e) => e.seq)).toEqual([3, 4, 5]);
    now += 60_001;
    stream.append({ payload: payload(6) });
    expect(stream.after(4)).toEqual({ ok: false, reason: 'too_old' });
    const recent = stream.after(5);
    expect(recent.ok && recent.entries.map((e) => e.seq)).toEqual([6]);
    expect(stream.bytes).toBe(1);
  });

  it('has an epoch per stream, and positions that parse back', () => {
    const a = new RecoveryStream(1, 1);
    const b = new RecoveryStream(1, 1);
    expect(a.epoch).not.toBe(b.epoch);
    expect(parsePosition(formatPosition(a.epoch, 42))).toEqual({ epoch: a.epoch, seq: 42 });
    for (const bad of ['', '.', 'x.', '.5', 'x.1e3', 'x.-1', 'x'.repeat(70) + '.1', 7])
      expect(parsePosition(bad)).toBeUndefined();
  });
});
