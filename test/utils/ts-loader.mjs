// Module hooks for child processes that run TypeScript: `.ts` files are compiled by SWC with
// the options of jest.config.js (legacy decorators and decorator metadata, which Nest's
// injection needs), and `./x.js` imports resolve to `./x.ts` when only the source exists, as
// jest.config.js's moduleNameMapper does.
import { transformSync } from '@swc/core';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath, URL } from 'node:url';
import { swc } from '../../jest.config.js';

const swcOptions = swc;

export async function resolve(specifier, context, nextResolve) {
  const parent = context.parentURL;
  if (parent?.startsWith('file:') && /^\.{1,2}\//.test(specifier) && specifier.endsWith('.js')) {
    const target = new URL(specifier, parent);
    if (!existsSync(target)) {
      const source = new URL(`${specifier.slice(0, -3)}.ts`, parent);
      if (existsSync(source)) return { url: source.href, shortCircuit: true };
    }
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (url.startsWith('file:') && url.endsWith('.ts')) {
    const filename = fileURLToPath(url);
    const { code } = transformSync(readFileSync(filename, 'utf8'), { ...swcOptions, filename });
    return { format: 'module', source: code, shortCircuit: true };
  }
  return nextLoad(url, context);
}
