# poolgrad server image: build the wheel in one stage, install it into a clean runtime stage.
# Every setting comes from POOLGRAD_* environment variables (see README.md).

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY service ./service
COPY poolgrad ./poolgrad
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POOLGRAD_HOST=0.0.0.0 \
    POOLGRAD_PORT=8000
COPY constraints.txt /tmp/constraints.txt
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --constraint /tmp/constraints.txt \
        "poolgrad[server] @ file://$(ls /wheels/poolgrad-*.whl)" \
 && rm /tmp/constraints.txt \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin poolgrad
USER 10001
EXPOSE 8000
# The standard library only: the image carries no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POOLGRAD_PORT', '8000'), timeout=4)"]
# uvicorn finishes in-flight requests on SIGTERM, then exits.
STOPSIGNAL SIGTERM
CMD ["poolgrad-server"]
