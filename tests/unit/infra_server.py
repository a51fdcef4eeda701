"""A stand-in for the served candidate in tests/unit/test_mutation_infra.py: answers ``GET /readyz`` and
``POST /recommend`` as the service does (bearer token from RECFORGE_API_TOKEN, the version header, the items),
from a spec the test writes. Standard library only: it starts in a fraction of a second, in a thread (serve) or
as the process infra.validate starts (``python infra_server.py PORT SPEC.json``).

Spec keys: ``lists`` ({json.dumps(user_id): [item ids]}), ``version`` (the X-Recforge-Model-Version header;
absent: no header), ``status`` / ``body`` (answer every /recommend with them instead), ``delay_s`` (sleep before
each /recommend answer), ``slow`` / ``slow_s`` (the numbers of the /recommend requests, from 0, answered after
``slow_s`` instead), ``not_ready_for`` (answer /readyz 503 that many times first), ``log`` (a file: one JSON
line per request, and the process's pid and environment first), ``say`` / ``say_err`` (lines printed at start
on stdout / stderr), ``exit`` (exit
with that code right after printing).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENV_KEYS = ("RECFORGE_API_TOKEN", "BENTOML_DO_NOT_TRACK", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def handler(spec: dict[str, Any], token: str | None) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    readyz_calls = [0]
    recommend_calls = [0]

    def record(entry: dict[str, Any]) -> None:
        if spec.get("log"):
            with lock, open(spec["log"], "a") as log:
                log.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no delayed-ACK stall

        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            with lock:
                readyz_calls[0] += 1
                ready = self.path == "/readyz" and readyz_calls[0] > spec.get("not_ready_for", 0)
            self.reply(200 if ready else 503, "ok" if ready else "starting")

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth = self.headers.get("Authorization")
            record({"path": self.path, "body": body, "auth": auth})
            with lock:
                number = recommend_calls[0]
                recommend_calls[0] += 1
            time.sleep(spec.get("slow_s", 0) if number in spec.get("slow", ()) else spec.get("delay_s", 0))
            if self.path != "/recommend" or (token is not None and auth != f"Bearer {token}"):
                self.reply(401, "unauthorized")
            elif "status" in spec:
                self.reply(spec["status"], spec.get("body", ""))
            else:
                items = spec["lists"][json.dumps(body["user_id"])][: body["k"]]
                headers = {"X-Recforge-Model-Version": spec["version"]} if "version" in spec else {}
                self.reply(200, {"user_id": body["user_id"], "items": [{"item_id": i} for i in items]}, headers)

    return Handler


def serve(spec: dict[str, Any], port: int = 0, token: str | None = None) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 answering from ``spec`` in a daemon thread (``server.shutdown()`` stops it)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(spec, token))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def main() -> None:
    port, spec_path = int(sys.argv[1]), sys.argv[2]
    with open(spec_path) as file:
        spec = json.load(file)
    if spec.get("log"):
        with open(spec["log"], "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "env": {k: os.environ.get(k) for k in ENV_KEYS}}) + "\n")
    for line in spec.get("say", []):
        print(line, flush=True)
    for line in spec.get("say_err", []):
        print(line, file=sys.stderr, flush=True)
    if "exit" in spec:
        sys.exit(spec["exit"])
    serve(spec, port, token=os.environ["RECFORGE_API_TOKEN"])
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
