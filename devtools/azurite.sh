#!/usr/bin/env bash
# Start, stop or query a local Azurite (Azure Storage emulator) for tests and .ci/run.
#
#   devtools/azurite.sh start    # idempotent: a no-op when our Azurite (or any server on :10000) already runs
#   devtools/azurite.sh stop     # kills the PID recorded in .azurite/pid, and only that
#   devtools/azurite.sh status   # exit 0 when running
#
# Why these choices:
# - ./node_modules/.bin/azurite is started directly, not through npx: killing an npx wrapper's PID leaves the
#   server running and holding the ports (observed), so the PID we record must be the server itself.
# - --skipApiVersionCheck: current azure-storage-* SDKs send an API version newer than Azurite 3.37.0 knows.
# - --inMemoryPersistence: nothing to clean up on disk; every start is an empty account.
# - 127.0.0.1 only: tests never listen on other interfaces.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# AZURITE_STATE_DIR: where the PID and log go. The tests set their own per run (tests/azure/azurite_support.py), so
# two isolated runs (unshare -n) of one checkout never take each other's Azurite for theirs.
STATE_DIR="${AZURITE_STATE_DIR:-$ROOT/.azurite}"
PID_FILE="$STATE_DIR/pid"
LOG_FILE="$STATE_DIR/azurite.log"
BIN="$ROOT/node_modules/.bin/azurite"
PORTS=(10000 10001 10002)   # blob, queue, table
# Azurite (Node) normally listens within 1-3 s; 60 s leaves room for a cold, loaded CI machine.
START_TIMEOUT_SECONDS=60
STOP_TIMEOUT_SECONDS=15

port_open() {
  # bash's /dev/tcp: no dependency on nc or python.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

our_pid() {
  # Prints the recorded PID if that process is alive and is an Azurite (guards against PID reuse).
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q azurite || return 1
  echo "$pid"
}

start() {
  if pid="$(our_pid)"; then
    echo "azurite already running (pid $pid)"
    return 0
  fi
  if port_open 10000; then
    echo "something already listens on 127.0.0.1:10000; assuming it is Azurite and leaving it alone"
    return 0
  fi
  if [[ ! -x "$BIN" ]]; then
    echo "azurite is not installed: run 'npm ci' (or 'npm install') in $ROOT first" >&2
    return 1
  fi
  mkdir -p "$STATE_DIR"
  local flags=(--silent --inMemoryPersistence --skipApiVersionCheck
               --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1)
  if "$BIN" --help 2>/dev/null | grep -q -- '--disableTelemetry'; then
    flags+=(--disableTelemetry)
  fi
  # setsid: the server must not die with the shell (or pytest) that started it; we stop it by PID.
  setsid "$BIN" "${flags[@]}" >"$LOG_FILE" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PID_FILE"
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until port_open 10000 && port_open 10001; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "azurite exited during start-up; log follows:" >&2
      cat "$LOG_FILE" >&2
      rm -f "$PID_FILE"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "azurite did not open ports 10000/10001 within ${START_TIMEOUT_SECONDS}s; log: $LOG_FILE" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "azurite started (pid $pid; blob :10000, queue :10001, table :10002)"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PID_FILE"
    echo "azurite not running (no live pid in $PID_FILE)"
    return 0
  fi
  kill "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -9 "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$PID_FILE"
  echo "azurite stopped (pid $pid)"
}

status() {
  if pid="$(our_pid)"; then
    echo "azurite running (pid $pid)"
    return 0
  fi
  for port in "${PORTS[@]:0:2}"; do
    if port_open "$port"; then
      echo "not started by this script, but 127.0.0.1:$port answers"
      return 0
    fi
  done
  echo "azurite not running"
  return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
