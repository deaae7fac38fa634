# Estuary in a container: one instance, listening on 8000. Mount the config (and pass its ${ENV}
# secrets) at run time; see docs/deploy.md:
#   docker build -t estuary .
#   docker run --rm -p 8000:8000 --env-file estuary.env \
#       -v "$PWD/estuary.toml:/etc/estuary/estuary.toml:ro" -v estuary-data:/var/lib/estuary estuary
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A dedicated user; its home is the working directory, where a relative SQLite ledger
# (sqlite:///estuary.db) is written. Mount a volume there to keep it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/estuary --create-home estuary

WORKDIR /opt/estuary
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /opt/estuary/src

USER estuary
WORKDIR /var/lib/estuary
EXPOSE 8000

# No curl in the slim image: ask /healthz with Python's standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

# SIGTERM lets running streams finish for [server] shutdown_drain_s (20 s) + up to 10 s to end
# them: stop with `docker stop -t 45` (compose:
# stop_grace_period: 45s), or Docker kills it after its default 10 s.
STOPSIGNAL SIGTERM
CMD ["estuary", "serve", "--config", "/etc/estuary/estuary.toml", "--host", "0.0.0.0", "--port", "8000"]
