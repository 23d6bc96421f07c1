FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY exporter ./exporter
COPY server ./server
RUN pip install --no-cache-dir .
EXPOSE 50051
CMD ["avap-server", "--host", "0.0.0.0", "--snapshots", "/snapshots"]
