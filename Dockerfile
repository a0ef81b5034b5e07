# cachesvc: node-local pull-through cache for container images.
# Build: docker build -t <your-registry>/cachesvc:0.1.0 . && docker push it; then set both
# image: lines of deploy/daemonset.yaml to it (a bare cachesvc:0.1.0 means docker.io/library/cachesvc)
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cachesvc ./cachesvc
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="cachesvc" \
      org.opencontainers.image.description="Node-local pull-through cache for container images" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cachesvc \
 && useradd --system --uid 10001 --gid cachesvc --home-dir /var/lib/cachesvc --shell /usr/sbin/nologin cachesvc \
 && install -d -o cachesvc -g cachesvc -m 0750 /var/lib/cachesvc
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENV PYTHONUNBUFFERED=1
VOLUME ["/var/lib/cachesvc"]
EXPOSE 5000 5050
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5050/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["cachesvc"]
CMD ["serve", "--config", "/etc/cachesvc/config/config.yaml"]
