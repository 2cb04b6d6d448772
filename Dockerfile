# One image for every suanwang service; the command picks the service.
FROM python:3.11.10-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY suanwang ./suanwang
COPY schemas ./schemas
COPY streams ./streams
COPY dispatcher ./dispatcher
COPY dashboards ./dashboards
RUN pip install --no-cache-dir . && useradd --create-home suanwang
USER suanwang
ENTRYPOINT ["suanwang"]
