import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A file the sample serves: its bytes and its `Content-Type`. */
export interface Asset {
  body: Buffer;
  type: string;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

/** The files of `sample/public/` that are served, by the name they are served under. */
const PUBLIC_FILES = ['board.html', 'board.js', 'chat.html', 'chat.js', 'style.css'];

/**
 * Where `sample/public/` is. `tsc` does not copy HTML, and the compiled sample runs from
 * `dist-sample/sample/`, so the files are read from the sources: first from the project root
 * (`npm run sample`, `nest start` and the tests run there), then relative to this file, compiled
 * (`dist-sample/sample/`) or not (`sample/`), for a process started from another directory.
 */
function publicDir(): string {
  const candidates = [
    resolve(process.cwd(), 'sample/public'),
    fileURLToPath(new URL('../../sample/public', import.meta.url)),
    fileURLToPath(new URL('./public', import.meta.url)),
  ];
  const found = candidates.find((dir) => existsSync(join(dir, 'board.html')));
  if (!found) throw new Error(`sample/public not found; looked at ${candidates.join(', ')}`);
  return found;
}

/**
 * partysocket's reconnecting WebSocket as the browser loads it: `dist/ws.js` is one ES module
 * with no imports, so it is served as it is, from `node_modules`, with no bundler and no CDN.
 * The package exports it as `partysocket/ws`; Node resolves the CommonJS twin, which sits next
 * to it.
 */
function partysocketModule(): string {
  const cjs = createRequire(import.meta.url).resolve('partysocket/ws');
  return join(dirname(cjs), 'ws.js');
}

/**
 * Reads every served file once, at start-up: a missing file fails the start, not the first
 * visitor, and no request ever touches the file system (so no path can escape this list).
 */
export function loadAssets(): Map<string, Asset> {
  const dir = publicDir();
  const assets = new Map<string, Asset>();
  for (const name of PUBLIC_FILES) {
    assets.set(name, { body: readFileSync(join(dir, name)), type: typeOf(name) });
  }
  assets.set('partysocket.js', {
    body: readFileSync(partysocketModule()),
    type: TYPES['.js'],
  });
  return assets;
}

function typeOf(name: string): string {
  const type = TYPES[name.slice(name.lastIndexOf('.'))];
  if (!type) throw new Error(`No content type for ${name}`);
  return type;
}
