import type { INestApplication, NestApplicationOptions } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { AppModule } from './app.module.js';

/** The HTTP platforms the sample runs on. */
export type SamplePlatform = 'express' | 'fastify';

/**
 * The sample application on either platform, not yet listening. Nothing in the sample's
 * modules depends on the platform: the WebSocket routes attach to whichever HTTP server Nest
 * creates. `main.ts` and the browser tests both start the sample through here.
 */
export function createSampleApp(
  platform: SamplePlatform,
  options: NestApplicationOptions = {},
): Promise<INestApplication> {
  return platform === 'fastify'
    ? NestFactory.create(AppModule, new FastifyAdapter(), options)
    : NestFactory.create(AppModule, options);
}
