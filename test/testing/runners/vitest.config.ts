// Only the kit's vitest files; the repository's own suite runs under jest.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/testing/runners/*.vitest.ts'],
    // One fork, no watch, no file-parallelism: the machine's cores are shared.
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 30_000,
  },
});
