import type { INestApplication, LoggerService, Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import type { AddressInfo } from 'node:net';

export interface TestApp {
  app: INestApplication;
  port: number;
  url(path: string): string;
  http(path: string): string;
}

/** Starts a real Nest application on 127.0.0.1 and an ephemeral port. */
export async function startApp(
  module: Type,
  options: {
    platform?: 'express' | 'fastify';
    logger?: LoggerService | false;
    configure?: (app: INestApplication) => void;
  } = {},
): Promise<TestApp> {
  const logger = options.logger ?? false;
  const app =
    options.platform === 'fastify'
      ? await NestFactory.create(module, new FastifyAdapter(), { logger })
      : await NestFactory.create(module, { logger });
  options.configure?.(app);
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  return {
    app,
    port,
    url: (path) => `ws://127.0.0.1:${port}${path}`,
    http: (path) => `http://127.0.0.1:${port}${path}`,
  };
}

/** A logger that keeps every line, to assert what was logged (and that no stack leaked). */
export class CapturingLogger implements LoggerService {
  readonly lines: { level: string; text: string }[] = [];
  private push(level: string, args: unknown[]): void {
    const text = args
      .map((arg) => (arg instanceof Error ? `${arg.message}\n${arg.stack}` : String(arg)))
      .join(' ');
    this.lines.push({ level, text });
  }
  log(...args: unknown[]): void {
    this.push('log', args);
  }
  error(...args: unknown[]): void {
    this.push('error', args);
  }
  warn(...args: unknown[]): void {
    this.push('warn', args);
  }
  debug(...args: unknown[]): void {
    this.push('debug', args);
  }
  verbose(...args: unknown[]): void {
    this.push('verbose', args);
  }
  text(level?: string): string {
    return this.lines
      .filter((line) => !level || line.level === level)
      .map((line) => line.text)
      .join('\n');
  }
}
