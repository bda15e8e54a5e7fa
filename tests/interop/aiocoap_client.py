"""aiocoap as an OSCORE client of a Grove server.

usage: aiocoap_client.py CTXDIR URI [--observe N]

Prints one JSON object per line: the response, then each notification
({"code": "2.05", "payload_hex": ...}); on failure {"error": ...} and exit 1.
"""
import argparse
import asyncio
import json
import sys

from aiocoap import GET, Context, Message


def line(msg):
    print(json.dumps({"code": msg.code.dotted, "payload_hex": msg.payload.hex()}), flush=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ctxdir")
    ap.add_argument("uri")
    ap.add_argument("--observe", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0)
    a = ap.parse_args()
    base = a.uri.split("/", 3)
    pattern = "/".join(base[:3]) + "/*"
    ctx = await Context.create_client_context()
    ctx.client_credentials.load_from_dict({pattern: {"oscore": {"basedir": a.ctxdir}}})
    try:
        req = Message(code=GET, uri=a.uri, observe=0 if a.observe else None)
        pr = ctx.request(req)
        resp = await asyncio.wait_for(pr.response, a.timeout)
        line(resp)
        if a.observe:
            seen = 0
            async def collect():
                nonlocal seen
                async for n in pr.observation:
                    line(n)
                    seen += 1
                    if seen >= a.observe:
                        return
            await asyncio.wait_for(collect(), a.timeout)
    except Exception as e:  # the test reads this line
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
    finally:
        await ctx.shutdown()


asyncio.run(main())
