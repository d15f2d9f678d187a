"""Drives requests at the demo API (standard library only): keep-alive connections from a few
threads, a mix of order creations and reads, for a given time. Prints what it sent."""

import http.client
import json
import random
import sys
import threading
import time

HOST, PORT = "127.0.0.1", 8080


def client(seconds, counts, seed):
    rnd = random.Random(seed)
    conn = None
    end = time.monotonic() + seconds
    last_id = 1
    while time.monotonic() < end:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, PORT, timeout=5)
            if rnd.random() < 0.7:
                items = [{"sku": f"SKU-{rnd.randrange(1000)}", "qty": rnd.randrange(1, 5)} for _ in range(rnd.randrange(1, 6))]
                body = json.dumps({"customer": f"c{rnd.randrange(10000)}", "items": items, "total": rnd.randrange(10, 500)})
                conn.request("POST", "/orders", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = json.loads(resp.read())
                last_id = data.get("id", last_id)
            else:
                conn.request("GET", f"/orders/{rnd.randrange(1, last_id + 1)}")
                conn.getresponse().read()
            counts[seed] += 1
        except (OSError, http.client.HTTPException):
            conn = None
            time.sleep(0.05)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    counts = [0] * threads
    ts = [threading.Thread(target=client, args=(seconds, counts, i)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"load: {sum(counts)} requests in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
