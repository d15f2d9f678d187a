"""A small orders API (standard library only) with the leak of memprof's seed report: its
telemetry exporter keeps every batch of spans it failed to send, so the service grows until
the container is OOM-killed.

    POST /orders        creates an order (JSON body), records a span per request
    GET  /orders/<id>   reads one back (a bounded cache in front of the "database")
    GET  /health

The spans go through a batching processor like OpenTelemetry's BatchSpanProcessor; the
exporter serialises each batch (as an OTLP exporter does) and sends it to a collector that is
unreachable; on failure it keeps the serialised batch for a retry that never succeeds
(`RetryingExporter.export`, like the seed's "Currently retrying 1 failed export(s) (899 bytes)").
Everything else frees what it allocates: request parsing and JSON encoding churn, and the cache
is bounded.
"""

import json
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8080"))


class Span:
    __slots__ = ("name", "trace_id", "span_id", "start_ns", "end_ns", "attributes", "events")

    def __init__(self, name, attributes):
        self.name = name
        self.trace_id = os.urandom(16).hex()
        self.span_id = os.urandom(8).hex()
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.attributes = attributes
        self.events = []

    def end(self):
        self.end_ns = time.time_ns()


class RetryingExporter:
    """Sends batches of spans to a collector that does not answer; keeps the failed requests to
    retry them later (the bug: nothing bounds that list)."""

    def __init__(self):
        self.retry_queue = []

    def send(self, payload):
        # The collector is unreachable.
        return False

    def export(self, spans):
        payload = json.dumps([self.encode(s) for s in spans]).encode()
        if self.send(payload):
            return True
        self.retry_queue.append(payload)
        return False

    @staticmethod
    def encode(span):
        return {
            "name": span.name,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "start": span.start_ns,
            "end": span.end_ns,
            "attributes": dict(span.attributes),
        }


class BatchProcessor:
    """Queues ended spans and exports them in batches from a background thread."""

    def __init__(self, exporter, batch_size=64, delay_s=0.5):
        self.exporter = exporter
        self.queue = queue.Queue(maxsize=2048)
        self.batch_size = batch_size
        self.delay_s = delay_s
        threading.Thread(target=self.worker, name="span-exporter", daemon=True).start()

    def on_end(self, span):
        try:
            self.queue.put_nowait(span)
        except queue.Full:
            pass

    def worker(self):
        while True:
            batch = []
            deadline = time.monotonic() + self.delay_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            if batch:
                self.exporter.export(batch)


TELEMETRY = BatchProcessor(RetryingExporter())


class OrderStore:
    """The "database", behind a bounded LRU cache."""

    def __init__(self, cache_size=500):
        self.rows = {}
        self.cache = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()
        self.next_id = 1

    def create(self, order):
        with self.lock:
            oid = self.next_id
            self.next_id += 1
            # Only the id and a total are kept: orders are archived elsewhere.
            self.rows[oid % 10_000] = (oid, order.get("total", 0))
            return oid

    def get(self, oid):
        with self.lock:
            row = self.cache.get(oid)
            if row is None:
                row = self.rows.get(oid % 10_000)
                self.cache[oid] = row
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            return row


STORE = OrderStore()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without this, Nagle's algorithm and delayed
    # ACKs hold every keep-alive response for 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        span = Span("GET " + self.path, {"http.method": "GET", "http.target": self.path})
        if self.path == "/health":
            self.reply(200, {"ok": True})
        elif self.path.startswith("/orders/"):
            row = STORE.get(int(self.path.rsplit("/", 1)[1]))
            self.reply(200 if row else 404, {"order": row})
        else:
            self.reply(404, {"error": "not found"})
        span.end()
        TELEMETRY.on_end(span)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        order = json.loads(self.rfile.read(length) or b"{}")
        span = Span("POST /orders", {"http.method": "POST", "order.items": len(order.get("items", []))})
        oid = STORE.create(order)
        self.reply(201, {"id": oid, "items": [dict(i, ok=True) for i in order.get("items", [])]})
        span.end()
        TELEMETRY.on_end(span)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    print(f"api-service: listening on 127.0.0.1:{PORT} (pid {os.getpid()})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
