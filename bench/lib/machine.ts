import { cpus, loadavg, release, totalmem, type } from 'node:os';
import { packageVersion } from '../servers/versions.js';

export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
  os: string;
  node: string;
  loadAverage: number[];
  packages: Record<string, string>;
  /** Filled in from the servers: which uWS build loaded, … */
  builds: Record<string, string>;
  bufferutil: string;
  fdLimit: string;
}

export function machineInfo(bufferutil: boolean, fdLimit: string): MachineInfo {
  const cpu = cpus();
  return {
    cpu: cpu[0]?.model.trim() ?? 'unknown',
    cores: cpu.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    os: `${type()} ${release()}`,
    node: process.version,
    loadAverage: loadavg().map((v) => Math.round(v * 100) / 100),
    packages: {
      ws: packageVersion('ws'),
      '@nestjs/core': packageVersion('@nestjs/core'),
      '@nestjs/platform-ws': packageVersion('@nestjs/platform-ws'),
      'ws (in platform-ws)': packageVersion('ws', '@nestjs/platform-ws'),
      '@nestjs/platform-socket.io': packageVersion('@nestjs/platform-socket.io'),
      'socket.io': packageVersion('socket.io'),
      'socket.io-client': packageVersion('socket.io-client'),
      'ws (in engine.io)': packageVersion('ws', 'engine.io'),
      '@trufflesuite/uws-js-unofficial': packageVersion('@trufflesuite/uws-js-unofficial'),
    },
    builds: {},
    bufferutil: bufferutil
      ? `allowed (bufferutil ${packageVersion('bufferutil')} if installed)`
      : 'off (WS_NO_BUFFER_UTIL=1: pure-JS masking, as a plain `npm i ws`)',
    fdLimit,
  };
}
