"""A TCP relay that delays every chunk by a fixed time, to stand in for a distant server.

    python3 benchmarks/latency_proxy.py --listen 5112 --to 5111 --delay-ms 25 &
    python3 benchmarks/overhead.py --scaling 32 --tracking-uri http://127.0.0.1:5112

Each request and each answer waits ``--delay-ms`` once, so a round trip to MLflow costs about
twice that on top of the server's own time, as across a data centre or a VPN. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while chunk := await reader.read(65536):
            await asyncio.sleep(delay)
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(listen: int, target: int, delay: float) -> None:
    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _relay(reader, upstream_writer, delay), _relay(upstream_reader, writer, delay)
        )

    server = await asyncio.start_server(connect, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", type=int, required=True, help="port to accept on")
    parser.add_argument("--to", type=int, required=True, help="port of the real server")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="delay each way (25)")
    args = parser.parse_args()
    if args.delay_ms < 0:
        parser.error(f"--delay-ms {args.delay_ms:g}: a delay is 0 or more milliseconds")
    try:
        asyncio.run(_serve(args.listen, args.to, args.delay_ms / 1000))
    except OSError as error:
        parser.exit(2, f"latency_proxy: cannot listen on 127.0.0.1:{args.listen}: {error}\n")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
