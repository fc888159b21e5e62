# Production image: gunicorn serving the annotation API, configured only through the environment
# (README, "Running in production"): CELLLOOP_DATABASE_URL (PostgreSQL), CELLLOOP_STORAGE_URL (s3://...),
# CELLLOOP_SECRET_KEY (the same on every host), CELLLOOP_RATELIMIT_STORAGE_URL (redis://...), CELLLOOP_BASE_URL.
# Docker cannot build on the CI machines: tests/backend/test_dockerfile.py runs these same steps in a fresh venv.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CELLLOOP_INSTANCE_DIR=/data \
    CELLLOOP_PORT=8000 \
    CELLLOOP_WORKERS=4
# a system user without a login shell owns nothing but the instance folder (0700)
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin cellloop \
    && install -d -o cellloop -g cellloop -m 0700 /data
WORKDIR /app
COPY setup.cfg pyproject.toml README.md alembic.ini ./
COPY backend backend
COPY pipeline pipeline
COPY migrations migrations
COPY frontend frontend
# editable: the app serves frontend/ and runs migrations/ from this folder
RUN pip install -e '.[postgres]'
USER cellloop
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['CELLLOOP_PORT']}/healthz\", timeout=3)"]
# migrations first (a no-op when the schema is current), then gunicorn in the foreground as PID 1
CMD ["sh", "-c", "cellloop db upgrade && exec cellloop serve --host 0.0.0.0 --port \"$CELLLOOP_PORT\" --workers \"$CELLLOOP_WORKERS\""]
