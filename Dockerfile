# Production image: gunicorn serving the annotation API; point it at PostgreSQL and S3 with
# CELLLOOP_DATABASE_URL and CELLLOOP_STORAGE_URL (s3://bucket/prefix?endpoint_url=...).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CELLLOOP_INSTANCE_DIR=/data
WORKDIR /app
COPY setup.cfg pyproject.toml README.md alembic.ini ./
COPY backend backend
COPY pipeline pipeline
COPY migrations migrations
COPY frontend frontend
RUN pip install --no-cache-dir -e '.[postgres]'
EXPOSE 8000
CMD ["sh", "-c", "cellloop db upgrade && exec cellloop serve --host 0.0.0.0 --port 8000 --workers ${CELLLOOP_WORKERS:-4}"]
