"""aiocoap as an OSCORE server for a Grove client.

usage: aiocoap_server.py CTXDIR PORT

Resources (all only through OSCORE): /hello, /big (5000 bytes), /counter (observable,
a new value every 200 ms). Prints "ready" once listening.
"""
import asyncio
import sys

import aiocoap
import aiocoap.resource as resource
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.credentials import CredentialsMap

PATTERN = b"grove-interop-"


class Hello(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(payload=b"hello from aiocoap")


class Big(resource.Resource):
    async def render_get(self, request):
        body = bytes(PATTERN[i % len(PATTERN)] for i in range(5000))
        return aiocoap.Message(payload=body)


class Counter(resource.ObservableResource):
    def __init__(self):
        super().__init__()
        self.value = 0
        asyncio.get_event_loop().call_later(0.2, self.tick)

    def tick(self):
        self.value += 1
        self.updated_state()
        asyncio.get_event_loop().call_later(0.2, self.tick)

    async def render_get(self, request):
        return aiocoap.Message(payload=str(self.value).encode())


async def main():
    ctxdir, port = sys.argv[1], int(sys.argv[2])
    site = resource.Site()
    site.add_resource(["hello"], Hello())
    site.add_resource(["big"], Big())
    site.add_resource(["counter"], Counter())
    creds = CredentialsMap()
    creds.load_from_dict({":grove": {"oscore": {"basedir": ctxdir}}})
    wrapped = OscoreSiteWrapper(site, creds)
    await aiocoap.Context.create_server_context(wrapped, bind=("127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
