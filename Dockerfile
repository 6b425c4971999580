# crm-sync container image.
#   docker build -t crm-sync .
#   docker run --env-file config/example.env crm-sync            # daemon
#   docker run --env-file config/example.env crm-sync --once     # one cycle (cron, CronJob)
#
# Signals: tini is PID 1 and forwards SIGTERM/SIGINT to crm-sync (exec form, no shell), so
# `docker stop` starts the worker's graceful shutdown (8 s grace, under Docker's 10 s).
# No secret is baked in: configuration comes from the environment or /run/secrets.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sync_worker ./sync_worker
RUN python -m venv /opt/crm-sync \
 && /opt/crm-sync/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 crmsync \
 && useradd --system --uid 10001 --gid crmsync --home-dir /nonexistent --shell /usr/sbin/nologin crmsync
COPY --from=build /opt/crm-sync /opt/crm-sync
ENV PATH=/opt/crm-sync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    HEALTH_PORT=8080
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HEALTH_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "crm-sync"]
