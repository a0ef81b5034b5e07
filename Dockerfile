# cachesvc: node-local pull-through cache for container images.
# Build: docker build -t <your-registry>/cachesvc:0.1.0 . && docker push it; then set `images:`
# in deploy/kustomization.yaml to it (a bare cachesvc:0.1.0 means docker.io/library/cachesvc).
# The base is pinned by tag; pin it by digest too (python:3.11.11-slim-bookworm@sha256:...)
# where your registry policy wants reproducible builds.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m pip install --no-cache-dir pip==25.0.1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every source edit. The stub package lets pip resolve the project's metadata.
COPY pyproject.toml README.md ./
RUN mkdir cachesvc && touch cachesvc/__init__.py \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels . \
 && rm /wheels/cachesvc-*.whl
COPY cachesvc ./cachesvc
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cachesvc" \
      org.opencontainers.image.description="Node-local pull-through cache for container images" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cachesvc \
 && useradd --system --uid 10001 --gid cachesvc --home-dir /var/lib/cachesvc --shell /usr/sbin/nologin cachesvc \
 && install -d -o cachesvc -g cachesvc -m 0750 /var/lib/cachesvc
# The wheels come in through a bind mount of the build stage: no layer holds them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index /wheels/*.whl
USER 10001:10001
# readOnlyRootFilesystem in the DaemonSet: nothing may try to write .pyc files at run time.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/cachesvc"]
EXPOSE 5000 5050
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/v2/', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["cachesvc"]
CMD ["serve", "--config", "/etc/cachesvc/config/config.yaml"]
