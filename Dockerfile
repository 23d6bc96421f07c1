# One image for every tool of the package: avap-server, avap-export, avap-sync, avap-pin, avapctl.
# docker-compose.yml and deploy/k8s/ run it; docs/deploy.md says how.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY exporter ./exporter
COPY server ./server
# A user of its own, with a fixed id that Kubernetes' runAsUser and fsGroup name (deploy/k8s/);
# /snapshots belongs to it, so a volume mounted there starts out writable by the exporter.
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 avap \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent avap \
    && mkdir /snapshots \
    && chown 10001:10001 /snapshots
USER 10001:10001
EXPOSE 50051
CMD ["avap-server", "--host", "0.0.0.0", "--snapshots", "/snapshots"]
