#!/usr/bin/env python3
"""A webhook receiver that is not ours: Python's standard library only.

    python3 bench/receiver.py [--port 0] [--delay-ms 0]

HTTP/1.1 with keep-alive, one thread per connection (ThreadingHTTPServer). Every POST is
read in full and answered 200 after --delay-ms. Prints its port as the first line of stdout,
then serves until killed. GET /_stats answers JSON counters:

    {"requests": N, "connections": N, "open": N, "ids": N, "overlaps": N}

`ids` counts distinct `webhook-id` headers; `overlaps` counts requests that arrived while
another request with the same `webhook-id` was still being answered (an at-most-one-attempt
in flight check).
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"requests": 0, "connections": 0, "open": 0, "overlaps": 0}
IDS = set()
IN_FLIGHT = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0
    # Buffer the reply and send it in one write. Unbuffered (the stdlib default), the headers
    # and the body go out as two segments, and on a kept-alive connection the second waits
    # for the client's delayed ACK (Nagle): about 40 ms per request, which caps a keep-alive
    # client at some 25 requests/s per connection. A client opening a connection per
    # request never sees it. --unbuffered keeps the default, to show that effect.
    wbufsize = 65536

    def setup(self):
        super().setup()
        with LOCK:
            STATS["connections"] += 1
            STATS["open"] += 1

    def finish(self):
        super().finish()
        with LOCK:
            STATS["open"] -= 1

    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/_stats":
            return self.reply(404)
        with LOCK:
            body = dict(STATS, ids=len(IDS))
        self.reply(200, json.dumps(body).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        wid = self.headers.get("webhook-id")
        with LOCK:
            STATS["requests"] += 1
            if wid is not None:
                IDS.add(wid)
                if IN_FLIGHT.get(wid, 0) > 0:
                    STATS["overlaps"] += 1
                IN_FLIGHT[wid] = IN_FLIGHT.get(wid, 0) + 1
        try:
            if self.delay:
                time.sleep(self.delay)
            self.reply(200, b"{}")
        finally:
            if wid is not None:
                with LOCK:
                    IN_FLIGHT[wid] -= 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--unbuffered", action="store_true")
    args = ap.parse_args()
    Handler.delay = args.delay_ms / 1000.0
    if args.unbuffered:
        Handler.wbufsize = 0
    ThreadingHTTPServer.request_queue_size = 1024  # the default 5 drops bursts of new connections
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
