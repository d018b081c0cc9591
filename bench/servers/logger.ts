import type { LoggerService } from '@nestjs/common';

/**
 * Counts what a server logs at warn level and above (the soak must end with no error logged)
 * and writes those lines to stderr, where the orchestrator keeps them; info and debug lines are
 * dropped so that logging costs nothing in the measurements.
 */
export class CountingLogger implements LoggerService {
  errors = 0;
  warnings = 0;
  readonly first: string[] = [];

  /** For servers without Nest: an error event of `ws`, uWS, … */
  record(level: 'error' | 'warn', text: string): void {
    if (level === 'error') this.errors++;
    else this.warnings++;
    this.keep(level, [text]);
  }

  log(): void {}
  debug(): void {}
  verbose(): void {}
  fatal(...args: unknown[]): void {
    this.errors++;
    this.keep('fatal', args);
  }
  error(...args: unknown[]): void {
    this.errors++;
    this.keep('error', args);
  }
  warn(...args: unknown[]): void {
    this.warnings++;
    this.keep('warn', args);
  }

  counts(): { error: number; warn: number; first: string[] } {
    return { error: this.errors, warn: this.warnings, first: this.first };
  }

  private keep(level: string, args: unknown[]): void {
    const text = args
      .map((arg) => (arg instanceof Error ? (arg.stack ?? arg.message) : String(arg)))
      .join(' ');
    if (this.first.length < 10) this.first.push(`${level}: ${text}`);
    process.stderr.write(`${level}: ${text}\n`);
  }
}
