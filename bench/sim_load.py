"""Load generator for the Wahero simulator: N concurrent senders for T seconds.

    .venv/bin/wahero-bulk simulate --port 8099 &
    .venv/bin/python bench/sim_load.py --url http://127.0.0.1:8099 --concurrency 64 --duration 10

Prints requests per second and the count of answers by status code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections import Counter
from urllib.parse import urlsplit

SEND_PATH = "/api/v1/messages/send"


async def _sender(host: str, port: int, request: bytes, until: float, counts: Counter[str]) -> None:
    """One keep-alive connection in raw HTTP/1.1, so the client costs less than the server."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12].decode()
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[status] += 1
    except (OSError, asyncio.IncompleteReadError) as error:
        counts[type(error).__name__] += 1
    finally:
        writer.close()


async def _run(url: str, key: str, concurrency: int, duration: float) -> dict[str, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps({"instanceId": "bench", "phone": "628123456789", "message": "hello"})
    request = (
        f"POST {SEND_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Api-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    counts: Counter[str] = Counter()
    until = time.monotonic() + duration
    await asyncio.gather(*(_sender(host, port, request, until, counts) for _ in range(concurrency)))
    return dict(counts)


def _worker(args: tuple[str, str, int, float]) -> dict[str, int]:
    return asyncio.run(_run(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8099")
    parser.add_argument("--key", default="wahero_test_simulator")
    parser.add_argument("--concurrency", type=int, default=64, help="senders per process")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    args = parser.parse_args()
    job = (args.url, args.key, args.concurrency, args.duration)
    started = time.monotonic()
    if args.processes == 1:
        results = [_worker(job)]
    else:
        with multiprocessing.Pool(args.processes) as pool:
            results = pool.map(_worker, [job] * args.processes)
    elapsed = time.monotonic() - started
    total: Counter[str] = Counter()
    for result in results:
        total.update(result)
    count = sum(total.values())
    print(f"{count} requests in {elapsed:.2f}s: {count / elapsed:.0f} requests/s")
    print("by status:", json.dumps(dict(sorted(total.items()))))


if __name__ == "__main__":
    main()
