"""A web-like Python workload for `cargo xtask bench` (standard library only, one process).

usage: python3 webload.py [--no-wait] REQUESTS

Each "request" parses a small JSON body, routes on its path, looks the user up in a bounded
LRU-like cache (a dict that evicts its oldest entry), builds a response of dicts, lists, tuples
and strings (many small, short-lived objects), serializes it to JSON and encodes it. One request
in 200 leaks a small record into a module-level list (a slow leak).

Bench protocol: prints `ready <pid>`, waits for SIGUSR1 (`--no-wait`: starts at once), runs
REQUESTS requests timed with time.perf_counter, prints one JSON line (`requests`, `seconds`,
`req_per_s`, `peak_rss_kib`, `leaked`, `checksum`) and exits. Deterministic: the bodies come from
a fixed-seed generator, so every run does the same work.
"""

import json
import os
import random
import resource
import signal
import sys
import time

CACHE_SIZE = 256
LEAK_EVERY = 200
BODIES = 512
USERS = 1000

# The slow leak: one small record every LEAK_EVERY requests, never released.
LEAKED = []


class LruCache:
    """A bounded dict: a hit moves the entry to the end, an insert past the bound evicts the
    oldest entry."""

    def __init__(self, size):
        self.size = size
        self.entries = {}
        self.hits = 0
        self.misses = 0

    def get(self, key):
        entries = self.entries
        value = entries.pop(key, None)
        if value is None:
            self.misses += 1
            return None
        entries[key] = value
        self.hits += 1
        return value

    def put(self, key, value):
        entries = self.entries
        entries[key] = value
        if len(entries) > self.size:
            del entries[next(iter(entries))]


CACHE = LruCache(CACHE_SIZE)

SKUS = [f"SKU-{n:05d}" for n in range(200)]
COUPONS = [None, None, None, "SPRING10", "VIP20", "WELCOME5"]
PATHS = ["/api/v1/orders", "/api/v1/cart", "/api/v1/quote"]


def make_bodies(seed=1234):
    """The incoming request bodies (bytes, as read from a socket), fixed by `seed`."""
    rnd = random.Random(seed)
    bodies = []
    for n in range(BODIES):
        items = [
            {
                "sku": rnd.choice(SKUS),
                "qty": rnd.randint(1, 5),
                "price": round(rnd.uniform(1, 200), 2),
                "gift": rnd.random() < 0.1,
            }
            for _ in range(rnd.randint(1, 6))
        ]
        body = {
            "path": f"{rnd.choice(PATHS)}/{n}?lang=en&v={rnd.randint(1, 9)}",
            "user": rnd.randrange(USERS),
            "session": "%016x" % rnd.getrandbits(64),
            "coupon": rnd.choice(COUPONS),
            "items": items,
            "meta": {"client": "bench", "retries": rnd.randint(0, 2)},
        }
        bodies.append(json.dumps(body).encode())
    return bodies


def route(path):
    """Splits `/api/v1/<resource>/<id>?k=v&...` into its parts."""
    path, _, query = path.partition("?")
    parts = path.strip("/").split("/")
    params = dict(kv.split("=", 1) for kv in query.split("&") if kv)
    return parts[2], int(parts[3]), params


def load_profile(user):
    """A cache miss: what a database read would return."""
    return {
        "id": user,
        "name": f"user-{user}",
        "email": f"user{user}@example.com",
        "tier": ("free", "pro", "enterprise")[user % 3],
        "tags": [f"t{user % 7}", f"t{user % 11}", f"region-{user % 5}"],
        "limits": {"orders": 10 + user % 20, "items": 50},
    }


def price_lines(items, discount):
    lines = []
    total = 0.0
    for it in items:
        unit = it["price"] * (1.0 - discount)
        subtotal = round(unit * it["qty"], 2)
        total += subtotal
        lines.append(
            {
                "sku": it["sku"],
                "qty": it["qty"],
                "unit": round(unit, 2),
                "subtotal": subtotal,
                "label": f"{it['sku']} x{it['qty']}",
                "flags": ("gift",) if it["gift"] else (),
            }
        )
    return lines, round(total, 2)


def handle(n, body):
    """One request: returns the encoded response."""
    req = json.loads(body)
    resource_name, order_id, params = route(req["path"])
    user = req["user"]
    profile = CACHE.get(user)
    if profile is None:
        profile = load_profile(user)
        CACHE.put(user, profile)
    discount = {"SPRING10": 0.10, "VIP20": 0.20, "WELCOME5": 0.05}.get(req["coupon"], 0.0)
    lines, total = price_lines(req["items"], discount)
    headers = [
        ("Content-Type", "application/json"),
        ("X-Request-Id", f"req-{n:08d}"),
        ("X-User", profile["name"]),
        ("Cache-Control", "no-store"),
    ]
    response = {
        "status": 200,
        "resource": resource_name,
        "id": order_id,
        "lang": params.get("lang", "en"),
        "user": {"name": profile["name"], "tier": profile["tier"]},
        "lines": lines,
        "total": total,
        "tags": sorted(set(profile["tags"]) | {resource_name}),
        "headers": dict(headers),
    }
    encoded = json.dumps(response, separators=(",", ":")).encode()
    if n % LEAK_EVERY == 0:
        LEAKED.append((n, user, len(encoded), req["session"]))
    return encoded


def serve(requests, bodies):
    checksum = 0
    nb = len(bodies)
    for n in range(requests):
        checksum += len(handle(n, bodies[n % nb]))
    return checksum


def wait_for_go():
    """Prints `ready <pid>` and waits for SIGUSR1. A handler rather than sigwait: under
    `memray run` other threads exist, and one of them may take the signal."""
    go = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    print(f"ready {os.getpid()}", flush=True)
    while not go:
        time.sleep(0.02)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def main(argv):
    args = [a for a in argv if a != "--no-wait"]
    if len(args) != 1:
        sys.exit("usage: webload.py [--no-wait] REQUESTS")
    requests = int(args[0])
    bodies = make_bodies()
    if "--no-wait" not in argv:
        wait_for_go()
    t0 = time.perf_counter()
    checksum = serve(requests, bodies)
    seconds = time.perf_counter() - t0
    result = {
        "requests": requests,
        "seconds": round(seconds, 6),
        "req_per_s": round(requests / seconds, 1),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "leaked": len(LEAKED),
        "checksum": checksum,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
