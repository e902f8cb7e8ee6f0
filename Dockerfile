# poolgrad server image. Stage 1 builds the wheel and installs it, with the pinned
# constraints, into a virtualenv; stage 2 copies only that virtualenv onto a clean base.
# Every setting comes from POOLGRAD_* environment variables (see README.md).

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY sdk ./sdk
COPY engine ./engine
COPY service ./service
COPY poolgrad ./poolgrad
# Two wheels from one tree: the SDK (`poolgrad`) and the server (`poolgrad-server`), which needs
# the SDK's wire protocol; both are installed from these files, never from an index. The server
# comes with its `fast` extra: the engine's compiled (Numba) kernels.
RUN python -m pip wheel --no-deps --wheel-dir /wheels ./sdk . \
 && python -m venv /opt/poolgrad \
 && /opt/poolgrad/bin/python -m pip install --constraint constraints.txt \
        "poolgrad @ file://$(ls /wheels/poolgrad-[0-9]*.whl)" \
        "poolgrad-server[fast] @ file://$(ls /wheels/poolgrad_server-*.whl)"

FROM python:3.12-slim AS runtime
ENV PATH=/opt/poolgrad/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POOLGRAD_HOST=0.0.0.0 \
    POOLGRAD_PORT=8000
COPY --from=build /opt/poolgrad /opt/poolgrad
# Numba's on-disk cache, owned by the runtime user: Numba uses a cache directory only where it
# can write, and compiling the kernels here, as that user, means the server loads them at
# start-up instead of compiling them (about 0.5 s instead of 10-15 s; see README, Performance).
# The cache is for this build machine's CPU: on another CPU the first start compiles once more.
ENV NUMBA_CACHE_DIR=/var/cache/poolgrad/numba
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin poolgrad \
 && mkdir -p "$NUMBA_CACHE_DIR" \
 && chown -R 10001 /var/cache/poolgrad
USER 10001
RUN python -c "from engine import compiled; compiled.warm_up()"
EXPOSE 8000
# The standard library only: the image carries no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POOLGRAD_PORT', '8000'), timeout=4)"]
# uvicorn finishes in-flight requests on SIGTERM, then exits.
STOPSIGNAL SIGTERM
CMD ["poolgrad-server"]
