# syntax=docker/dockerfile:1
# An app built on Loglane, as an image: here the example shop (loglane.examples.shop) with the
# Kafka and PostgreSQL clients. For an app of your own, put this file in its project, whose
# pyproject.toml depends on "loglane[kafka,postgres]", and set APP to its landscape.
#
#   docker build -t shop .
#   docker run shop                                          the HTTP API of every service
#   docker run shop loglane worker --service customers       one worker of one service
#
# Everything else comes from LOGLANE_… variables (docs/settings.md): LOGLANE_LOG, LOGLANE_DB,
# LOGLANE_API_TOKENS, ... compose.yaml runs the shop this way on Kafka and PostgreSQL.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build: install the app and its dependencies into a virtual environment, from wheels only
# (every dependency ships one for Linux), so the build needs no compiler.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
RUN python -m venv /opt/app
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/app/bin/pip install --no-cache-dir ".[kafka,postgres]"

# Run: the environment alone, as a user without privileges.
FROM ${PYTHON_IMAGE} AS run
ARG APP=loglane.examples.shop
RUN groupadd --system --gid 10001 loglane \
    && useradd --system --uid 10001 --gid loglane --home-dir /home/loglane --create-home \
        --shell /usr/sbin/nologin loglane
COPY --from=build /opt/app /opt/app
ENV PATH=/opt/app/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOGLANE_APP=${APP} \
    LOGLANE_HOST=0.0.0.0 \
    LOGLANE_PORT=8000 \
    LOGLANE_LOG_FORMAT=json
WORKDIR /home/loglane
USER 10001:10001
EXPOSE 8000
# /healthz of the API, or of a worker's probes when LOGLANE_PROBE_PORT is set (a worker serves
# no API; compose.yaml gives each worker a probe port).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('LOGLANE_PROBE_PORT') or os.environ.get('LOGLANE_PORT', '8000'); urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["loglane", "api"]
