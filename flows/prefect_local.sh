#!/usr/bin/env bash
# Local Prefect for recforge: `flows/prefect_local.sh start|stop|status` (make prefect / make prefect-stop).
# start: a Prefect server on 127.0.0.1:4200 (analytics off) and `python -m flows.serve`, which
#        registers the deployments (training, retrain with its schedule off, batch-recommend)
#        and runs what is triggered from the UI or with `prefect deployment run`.
# stop:  stops both process groups by the pids recorded at start (checked against the
#        process's command line, so a PID reused after a reboot is never signalled).
# Settings (environment): PREFECT_HOST/PREFECT_PORT (127.0.0.1:4200), PREFECT_RUN_DIR (pid files, logs and the
# auth secret: .recforge-cache/prefect), RECFORGE_WORK_DIR (where the served flow runs run, i.e. whose params.yaml,
# data/, artifacts/ and metrics/ they use: the project root), PREFECT_HOME (Prefect's own database and settings).
# The server requires HTTP basic auth (a random secret made once in $RUN/auth, mode 600;
# the UI's login asks for the whole string 'recforge:<secret>'; `prefect` clients started here read it
# from PREFECT_API_AUTH_STRING),
# keeps CSRF protection on and allows cross-origin requests only from its own UI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
HOST=${PREFECT_HOST:-127.0.0.1}
PORT=${PREFECT_PORT:-4200}
RUN=${PREFECT_RUN_DIR:-.recforge-cache/prefect}
WORK=${RECFORGE_WORK_DIR:-$PWD}
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=False DVC_NO_ANALYTICS=1
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true
export PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS="http://$HOST:$PORT"

auth() {
  mkdir -p "$RUN"
  if [[ ! -s "$RUN/auth" ]]; then
    (umask 077; "$VENV/bin/python" -c "import secrets; print('recforge:' + secrets.token_urlsafe(24))" >"$RUN/auth")
  fi
  export PREFECT_SERVER_API_AUTH_STRING PREFECT_API_AUTH_STRING
  PREFECT_SERVER_API_AUTH_STRING=$(cat "$RUN/auth")
  PREFECT_API_AUTH_STRING=$PREFECT_SERVER_API_AUTH_STRING
}

# the pid file's process is alive AND is the program we started (its command line names it)
alive() {
  local pid pattern=$2
  [[ -f "$RUN/$1.pid" ]] || return 1
  pid=$(cat "$RUN/$1.pid")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}
SERVER_CMD="server start"
DEPLOYMENTS="training/training training/retrain batch_recommend/batch-recommend continuous/continuous"

# every deployment of flows/serve.py is registered (one API call each; faster than `prefect deployment ls`)
deployed() {
  "$VENV/bin/python" - $DEPLOYMENTS <<'PY' 2>/dev/null
import os, sys, httpx
user, _, password = os.environ["PREFECT_API_AUTH_STRING"].partition(":")
url = os.environ["PREFECT_API_URL"]
with httpx.Client(auth=(user, password), timeout=2) as client:
    sys.exit(any(client.get(f"{url}/deployments/name/{name}").status_code != 200 for name in sys.argv[1:]))
PY
}
SERVE_CMD="flows.serve"

start() {
  mkdir -p "$RUN"
  auth
  if alive server "$SERVER_CMD"; then
    echo "prefect server already running (pid $(cat "$RUN/server.pid"))"
  else
    setsid "$VENV/bin/prefect" server start --host "$HOST" --port "$PORT" >"$RUN/server.log" 2>&1 &
    echo $! >"$RUN/server.pid"
  fi
  for _ in $(seq 1 120); do
    "$VENV/bin/python" -c "import httpx,sys; sys.exit(httpx.get('$PREFECT_API_URL/health', timeout=2).status_code != 200)" 2>/dev/null && break
    alive server "$SERVER_CMD" || { echo "prefect server exited; see $RUN/server.log"; tail -20 "$RUN/server.log"; exit 1; }
    sleep 1
  done
  if alive serve "$SERVE_CMD"; then
    echo "deployments already served (pid $(cat "$RUN/serve.pid"))"
  else
    local python
    python=$(cd "$VENV/bin" && pwd)/python  # absolute: flows.serve runs in $WORK
    (cd "$WORK" && exec setsid "$python" -m flows.serve) >"$RUN/serve.log" 2>&1 &
    echo $! >"$RUN/serve.pid"
  fi
  for _ in $(seq 1 90); do
    deployed && break
    alive serve "$SERVE_CMD" || { echo "flows.serve exited; see $RUN/serve.log"; tail -20 "$RUN/serve.log"; exit 1; }
    sleep 1
  done
  deployed || { echo "the deployments were not registered within 90 s; see $RUN/serve.log"; exit 1; }
  "$VENV/bin/prefect" deployment ls 2>/dev/null || true
  echo
  echo "Prefect UI:  http://$HOST:$PORT   (log in with the whole line of $RUN/auth, 'recforge:<secret>')"
  echo "run:         PREFECT_API_URL=$PREFECT_API_URL $VENV/bin/prefect deployment run training/training --watch"
  echo "stop:        make prefect-stop    (logs in $RUN/)"
}

stop_one() {
  local name=$1 pattern=$2 pid
  [[ -f "$RUN/$name.pid" ]] || return 0
  pid=$(cat "$RUN/$name.pid")
  if alive "$name" "$pattern"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop_one serve "$SERVE_CMD"; stop_one server "$SERVER_CMD" ;;
  status) for n in server serve; do p=$SERVER_CMD; [[ $n == serve ]] && p=$SERVE_CMD; if alive $n "$p"; then echo "$n: running (pid $(cat "$RUN/$n.pid"))"; else echo "$n: stopped"; fi; done ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
