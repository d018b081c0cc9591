import { Injectable, Logger, type Type } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, ModuleRef } from '@nestjs/core';
import { WS_ROUTE_HANDLER_METADATA, WS_ROUTE_METADATA } from '../ws-routes.constants.js';
import type { WsRouteMetadata } from '../decorators/ws-route.decorator.js';
import type { WsHandlerMetadata } from '../decorators/ws-lifecycle.decorators.js';
import type { WsRouteOptions } from '../interfaces/ws-route-options.interface.js';

/** One decorated method of a route class. */
export interface WsHandlerDefinition extends WsHandlerMetadata {
  methodName: string;
}

/** A route class as found at start-up: everything the gateway needs, read once. */
export interface WsRouteDefinition {
  pattern: string;
  routeClass: Type;
  instance: object;
  options: WsRouteOptions;
  handlers: WsHandlerDefinition[];
  /** The module that provides the route class, to instantiate its option guards in. */
  moduleRef: ModuleRef | undefined;
}

/**
 * Reads `@WsRoute` classes and their handler decorators from every module's providers, once,
 * when the application starts. Nothing reads metadata after that.
 */
@Injectable()
export class WsRouteExplorer {
  private readonly logger = new Logger('WsRoutes');

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
  ) {}

  explore(): WsRouteDefinition[] {
    const routes: WsRouteDefinition[] = [];
    const seen = new Set<object>();
    for (const wrapper of this.discovery.getProviders()) {
      const { metatype, instance } = wrapper;
      if (!metatype || typeof metatype !== 'function' || !instance || seen.has(instance)) continue;
      const metadata: WsRouteMetadata | undefined = Reflect.getMetadata(
        WS_ROUTE_METADATA,
        metatype,
      );
      if (!metadata) continue;
      if (!wrapper.isDependencyTreeStatic()) {
        throw new Error(
          `@WsRoute class ${metatype.name} must be a singleton: request- and transient-scoped route classes (or dependencies) are not supported`,
        );
      }
      seen.add(instance);
      routes.push({
        pattern: metadata.path,
        routeClass: metatype as Type,
        instance,
        options: metadata.options,
        handlers: this.exploreHandlers(instance),
        moduleRef: (
          wrapper.host as { providers?: Map<unknown, { instance: unknown }> } | undefined
        )?.providers?.get(ModuleRef)?.instance as ModuleRef | undefined,
      });
      this.logger.log(`Mapped WebSocket route ${metadata.path} (${metatype.name})`);
    }
    return routes;
  }

  private exploreHandlers(instance: object): WsHandlerDefinition[] {
    const prototype = Object.getPrototypeOf(instance);
    const handlers: WsHandlerDefinition[] = [];
    for (const methodName of this.scanner.getAllMethodNames(prototype)) {
      const entries: WsHandlerMetadata[] | undefined = Reflect.getMetadata(
        WS_ROUTE_HANDLER_METADATA,
        prototype[methodName],
      );
      for (const entry of entries ?? []) handlers.push({ ...entry, methodName });
    }
    return handlers;
  }
}
