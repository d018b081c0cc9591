/**
 * Reads a Prometheus text exposition, as a scraper does, from a real HTTP `/metrics` endpoint:
 * every sample by name and labels, and the `# TYPE` of every metric.
 */
export interface Scrape {
  readonly status: number;
  readonly contentType: string;
  readonly text: string;
  /** The `# TYPE` lines: metric name → type. */
  readonly types: Map<string, string>;
  /** The value of one sample; `undefined` if there is no such sample. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** Every sample of one name, with its labels. */
  samples(name: string): { labels: Record<string, string>; value: number }[];
}

export async function scrape(url: string): Promise<Scrape> {
  const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  const text = await response.text();
  return parseExposition(text, response.status, response.headers.get('content-type') ?? '');
}

export function parseExposition(text: string, status = 200, contentType = ''): Scrape {
  const types = new Map<string, string>();
  const all: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1], type[2]);
      continue;
    }
    if (line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!sample) throw new Error(`not a Prometheus sample line: ${line}`);
    all.push({ name: sample[1], labels: parseLabels(sample[2] ?? ''), value: Number(sample[3]) });
  }
  const key = (labels: Record<string, string>) =>
    JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));
  return {
    status,
    contentType,
    text,
    types,
    value(name, labels = {}) {
      const wanted = key(labels);
      const found = all.filter((s) => s.name === name && key(s.labels) === wanted);
      if (found.length > 1) throw new Error(`${name} ${wanted} appears ${found.length} times`);
      return found[0]?.value;
    },
    samples: (name) =>
      all.filter((s) => s.name === name).map(({ labels, value }) => ({ labels, value })),
  };
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const pattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gy;
  let match: RegExpExecArray | null;
  let end = 0;
  while ((match = pattern.exec(text))) {
    labels[match[1]] = match[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    end = pattern.lastIndex;
  }
  if (end !== text.length) throw new Error(`labels not parsed: {${text}}`);
  return labels;
}
