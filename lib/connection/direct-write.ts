import { writeSync } from 'node:fs';
import type { Socket } from 'node:net';

/** Node's `net.Socket` internals behind {@link writeDirect}. */
interface StreamHandle {
  readonly fd?: unknown;
  readonly constructor: { readonly name: string };
}

function handleOf(socket: Socket): StreamHandle | null | undefined {
  return (socket as unknown as { _handle?: StreamHandle | null })._handle;
}

/**
 * The descriptor {@link writeDirect} may write to: a plain TCP (or pipe) socket's, `-1` for
 * anything else (TLS, whose bytes must go through the cipher; Windows, no descriptor).
 */
export function directFd(socket: Socket): number {
  const handle = handleOf(socket);
  if (!handle || (socket as { encrypted?: boolean }).encrypted === true) return -1;
  const kind = handle.constructor.name;
  if (kind !== 'TCP' && kind !== 'Pipe') return -1;
  return typeof handle.fd === 'number' && handle.fd >= 0 ? handle.fd : -1;
}

/**
 * Writes `data` with one `write(2)` on the socket's descriptor `fd` (from {@link directFd})
 * when nothing is queued before it, so the order cannot change, and returns how many bytes the
 * kernel took: all of them, some (its buffer filled up), or 0 (queued writes, a full buffer, a
 * closed socket, or an error, which the stream write of the rest then reports as always).
 *
 * The stream's `writableLength` counts every byte of its writes until libuv has handed all of
 * it to the kernel, so 0 means that libuv holds nothing either. A destroyed socket has no
 * handle (Node drops it before the descriptor is closed): a descriptor number the kernel has
 * since given to another connection is never written to.
 *
 * Node's stream write costs a request object and a dozen state updates per write; with one
 * write per socket per broadcast turn that is most of what a paced fan-out pays above the
 * syscall. What this writes is not counted in `socket.bytesWritten`.
 */
export function writeDirect(socket: Socket, fd: number, data: Buffer): number {
  if (socket.writableLength !== 0 || !handleOf(socket)) return 0;
  try {
    return writeSync(fd, data);
  } catch {
    return 0;
  }
}

/**
 * Writes `data` to the socket: straight to its descriptor `fd` (`-1`: never) when nothing
 * waits for the write (`callback`), and the rest (if the kernel's buffer filled up) through the
 * stream, which keeps it in order and accounts for it.
 */
export function writeOut(
  socket: Socket,
  data: Buffer,
  fd: number,
  callback: ((error?: Error | null) => void) | undefined,
): void {
  if (callback !== undefined) {
    socket.write(data, callback);
    return;
  }
  if (fd >= 0) {
    const written = writeDirect(socket, fd, data);
    if (written === data.length) return;
    if (written > 0) data = data.subarray(written);
  }
  socket.write(data);
}
