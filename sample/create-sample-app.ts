import type { INestApplication, NestApplicationOptions } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { AppModule } from './app.module.js';
import { configFromEnv, type SampleConfig } from './sample-config.js';

/** The HTTP platforms the sample runs on. */
export type SamplePlatform = 'express' | 'fastify';

/**
 * The sample application on either platform, not yet listening. Nothing in the sample's
 * modules depends on the platform: the WebSocket routes attach to whichever HTTP server Nest
 * creates. `main.ts` and the browser tests both start the sample through here; `config`
 * (from the environment unless given) says whether it scales out through a Redis.
 */
export function createSampleApp(
  platform: SamplePlatform,
  options: NestApplicationOptions = {},
  config: SampleConfig = configFromEnv(),
): Promise<INestApplication> {
  const module = AppModule.register(config);
  return platform === 'fastify'
    ? NestFactory.create(module, new FastifyAdapter(), options)
    : NestFactory.create(module, options);
}
