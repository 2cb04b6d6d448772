# One image for every suanwang service; the command picks the service.
# The dashboard's browser assets are npm packages, installed in a build stage, never committed.
FROM node:20.18.1-bookworm-slim AS web-assets
WORKDIR /web
COPY dashboards/web/package.json dashboards/web/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11.10-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY suanwang ./suanwang
COPY schemas ./schemas
COPY streams ./streams
COPY dispatcher ./dispatcher
COPY dashboards ./dashboards
COPY api ./api
COPY benches ./benches
COPY simulator ./simulator
COPY devstack ./devstack
COPY billing ./billing
RUN pip install --no-cache-dir . && useradd --create-home suanwang
COPY --from=web-assets /web/node_modules /app/web-assets
ENV SUANWANG_WEB_ASSETS_DIR=/app/web-assets
USER suanwang
ENTRYPOINT ["suanwang"]
