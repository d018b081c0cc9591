import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);

function packageDir(name: string, paths?: string[]): string | undefined {
  let dir = dirname(require.resolve(name, paths ? { paths } : undefined));
  for (let i = 0; i < 6; i++, dir = dirname(dir)) {
    try {
      if (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).name === name) return dir;
    } catch {
      /* keep walking up */
    }
  }
  return undefined;
}

/**
 * Version of the package `name` as the package `from` (or this bench) resolves it: a nested copy
 * counts, since platform-ws and engine.io bring their own `ws`.
 */
export function packageVersion(name: string, from?: string): string {
  try {
    const base = from ? packageDir(from) : undefined;
    const dir = packageDir(name, base ? [base] : undefined);
    return dir ? JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version : 'unknown';
  } catch {
    return 'not installed';
  }
}
