#!/usr/bin/env bash
# Runs the e2e tests (test/e2e) against the NestJS 11 line of packages.
#
# The repository is developed against NestJS 12 (ESM) but its peer range also claims ^11 (CommonJS).
# This script copies the working tree (without node_modules, dist) into a scratch directory,
# installs the dev dependencies there, swaps in the latest 11.x of every @nestjs/* package, and runs
# `npm test -- test/e2e`. The repository itself (package.json, lockfile, node_modules) is never touched.
#
# Exit code: the exit code of the test run (non-zero also when set-up fails).
#
# Environment:
#   KEEP_SCRATCH=1        keep the scratch directory afterwards (its path is printed)
#   NEST11_TEST_TIMEOUT   seconds allowed for the test run (default 600); 124 on timeout
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/nest11-compat.XXXXXX")"
started=$SECONDS

cleanup() {
  if [[ "${KEEP_SCRATCH:-0}" == "1" ]]; then
    echo "nest11-compat: scratch directory kept at $scratch"
  else
    rm -rf "$scratch"
  fi
}
trap cleanup EXIT

log() { echo "nest11-compat [$((SECONDS - started))s]: $*"; }

# The Nest 11 line. platform-fastify 11 lags the others by a few patch releases; ^11 picks the
# newest 11.x of each, and every one of them has a peer range of @nestjs/common/core ^11.0.0.
nest11=(
  '@nestjs/common@^11'
  '@nestjs/core@^11'
  '@nestjs/websockets@^11'
  '@nestjs/platform-ws@^11'
  '@nestjs/platform-express@^11'
  '@nestjs/platform-fastify@^11'
  '@nestjs/platform-socket.io@^11'
  '@nestjs/testing@^11'
)

log "copying $repo_root to $scratch"
tar -C "$repo_root" \
  --exclude='node_modules' --exclude='./dist' --exclude='./dist-*' \
  --exclude='./coverage' --exclude='./.git' \
  -cf - . | tar -C "$scratch" -xf -

cd "$scratch"
npm_flags=(--no-audit --no-fund --prefer-offline --loglevel=error)

log "npm install"
npm install "${npm_flags[@]}"

log "npm install ${nest11[*]}"
# Saved to the scratch copy's package.json so that npm keeps a consistent tree.
npm install "${npm_flags[@]}" --save-dev "${nest11[@]}"

# Make sure the swap happened: every @nestjs package in the tree must be 11.x. (Read from disk:
# Nest 12's export maps do not all expose package.json.)
node -e '
  const fs = require("node:fs");
  const names = ["common", "core", "websockets", "platform-ws", "platform-express", "platform-fastify"];
  let wrong = 0;
  for (const name of names) {
    const { version } = JSON.parse(fs.readFileSync(`node_modules/@nestjs/${name}/package.json`, "utf8"));
    console.log(`  @nestjs/${name}@${version}`);
    if (!version.startsWith("11.")) wrong++;
  }
  if (wrong) { console.error("nest11-compat: a @nestjs package is not 11.x"); process.exit(1); }
'
nested="$(find node_modules -mindepth 5 -maxdepth 6 -path '*/node_modules/@nestjs/*/package.json' || true)"
if [[ -n "$nested" ]]; then
  log "warning: nested @nestjs copies (more than one Nest in the tree):"
  echo "$nested"
fi

log "npm test -- test/e2e"
status=0
timeout --kill-after=10 "${NEST11_TEST_TIMEOUT:-600}" npm test -- test/e2e || status=$?
log "tests finished with exit code $status"
exit "$status"
