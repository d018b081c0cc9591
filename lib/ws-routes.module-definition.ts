import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { WsRoutesModuleOptions } from './interfaces/ws-routes-module-options.interface.js';

export const {
  ConfigurableModuleClass: WsRoutesConfigurableModule,
  MODULE_OPTIONS_TOKEN: WS_ROUTES_OPTIONS,
  OPTIONS_TYPE: WS_ROUTES_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: WS_ROUTES_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<WsRoutesModuleOptions>()
  .setClassMethodName('forRoot')
  .setExtras({}, (definition) => ({ ...definition, global: true }))
  .build();
