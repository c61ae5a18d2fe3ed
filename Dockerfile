# wahero-bulk: one image for the worker, the beat, migrations and the simulator.
# Build: docker build -t wahero-bulk .   Run: see docker-compose.yml and docs/DEPLOYING.md.
# No secret is ever baked in: the API key arrives at run time as a file (Docker/Kubernetes
# secret, WAHERO_API_KEY_FILE) or an environment variable.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
# The dependency ranges pinned in pyproject.toml; every dependency ships a wheel for 3.11, so
# the image needs no compiler. Installed under /install to copy into a clean final stage.
RUN pip install --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 wahero \
    && useradd --system --uid 10001 --gid wahero --home-dir /app --create-home \
       --shell /usr/sbin/nologin wahero
WORKDIR /app
USER 10001:10001

# Celery's warm shutdown on SIGTERM: in-flight sends finish and are recorded before exit.
# Give the container a grace period longer than WAHERO_CONNECT_TIMEOUT + WAHERO_READ_TIMEOUT.
STOPSIGNAL SIGTERM
# Worker containers: PostgreSQL (schema at head), Redis, the key, and this host's worker.
# Other roles (beat, migrate, simulator) override it in docker-compose.yml.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["wahero-bulk", "health", "--worker"]
CMD ["wahero-bulk", "worker"]
