"""The baseline for ``bench.service``: one FastAPI endpoint under uvicorn that returns its body.

``python -m bench.echo`` serves it on ``$POOLGRAD_HOST:$POOLGRAD_PORT`` under uvicorn with no
work of its own; ``$BENCH_ECHO_HTTP`` picks uvicorn's HTTP parser (``auto``: httptools when
installed, or ``h11``), so the floor can run on the same parser as the service.
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/echo")
async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type=request.headers.get("content-type"))


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.environ.get("POOLGRAD_HOST", "127.0.0.1"),
        port=int(os.environ.get("POOLGRAD_PORT", "8001")),
        log_level="warning",
        access_log=False,
        http=os.environ.get("BENCH_ECHO_HTTP", "auto"),
    )
