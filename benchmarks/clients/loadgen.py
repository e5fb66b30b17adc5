"""Fixed-rate HTTP/1.1 load on 127.0.0.1 (standard library only; asyncio).

Open loop: request i is due at ``start + i / rate``, spread over keep-alive connections. Latency
is counted from the due time, not from when the request could be sent, so a server stall shows
up in the tail instead of silently slowing the generator (no coordinated omission).
Prints one JSON object: sent, errors, statuses, achieved rate, p50/p90/p99/max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round((len(ordered) - 1) * q / 100)))
    return ordered[index]


async def _connection(
    args: argparse.Namespace,
    request: bytes,
    due: list[float],
    *,
    latencies: list[float],
    lateness: list[float],
    statuses: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    try:
        for when in due:
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
                # The generator's own lateness (timer and scheduling), not the server's: only
                # when this connection was free at the due time.
                lateness.append((time.perf_counter() - when) * 1e3)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - when) * 1e3)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> dict[str, object]:
    if args.post_xml:
        body = args.post_xml.encode()
        request = (
            f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    else:
        request = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    total = int(args.rate * args.duration)
    start = time.perf_counter() + 0.2
    schedule = [start + i / args.rate for i in range(total)]
    latencies: list[float] = []
    lateness: list[float] = []
    statuses: dict[str, int] = {}
    tasks = [
        _connection(
            args,
            request,
            schedule[c :: args.connections],
            latencies=latencies,
            lateness=lateness,
            statuses=statuses,
        )
        for c in range(args.connections)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*tasks, return_exceptions=True), timeout=args.duration + 30
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    late = sorted(lateness)
    return {
        "rate": args.rate,
        "sent": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "achieved_rate": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_percentile(ordered, 50), 4),
        "p90_ms": round(_percentile(ordered, 90), 4),
        "p99_ms": round(_percentile(ordered, 99), 4),
        "max_ms": round(ordered[-1], 4) if ordered else None,
        # How late the generator woke for a request it was free to send on time.
        "send_late_p50_ms": round(_percentile(late, 50), 4),
        "send_late_p99_ms": round(_percentile(late, 99), 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--post-xml", default=None)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
