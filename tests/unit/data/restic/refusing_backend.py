"""A storage server on 127.0.0.1 that refuses every request, for capture_refusals.sh.

MODE ``401``: a REST server with basic auth that rejects any credentials. ``s3sig``: an S3
endpoint answering 403 SignatureDoesNotMatch, as AWS/minio do for a wrong secret key. ``500``:
a REST server failing every request, so restic prints its retry notices.
Usage: python refusing_backend.py MODE PORT
"""

import sys

from aiohttp import web

S3_SIGNATURE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
    "<Message>The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method.</Message><RequestId>1</RequestId></Error>"
)


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])

    async def handle(request: web.Request) -> web.Response:
        if mode == "401":
            return web.Response(
                status=401,
                text="Unauthorized\n",
                headers={"WWW-Authenticate": 'Basic realm="restic"'},
            )
        if mode == "s3sig":
            if request.method == "HEAD":
                return web.Response(status=403)
            return web.Response(status=403, text=S3_SIGNATURE, content_type="application/xml")
        return web.Response(status=500, text="internal error\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
