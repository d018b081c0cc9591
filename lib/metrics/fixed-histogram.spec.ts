import { FixedHistogram } from './fixed-histogram.js';

describe('FixedHistogram', () => {
  it('puts a value in the first bucket whose bound it does not exceed (le is inclusive)', () => {
    const histogram = new FixedHistogram([0, 1, 5]);
    for (const value of [0, 0.5, 1, 1.0001, 5, 6, 1e9]) histogram.observe(value);
    expect(histogram.counts).toEqual([1, 2, 2, 2]);
    expect(histogram.snapshot()).toEqual({
      buckets: [
        { le: 0, count: 1 },
        { le: 1, count: 3 },
        { le: 5, count: 5 },
      ],
      sum: 0 + 0.5 + 1 + 1.0001 + 5 + 6 + 1e9,
      count: 7,
    });
  });

  it('is empty before the first observation', () => {
    expect(new FixedHistogram([0.1]).snapshot()).toEqual({
      buckets: [{ le: 0.1, count: 0 }],
      sum: 0,
      count: 0,
    });
  });
});
