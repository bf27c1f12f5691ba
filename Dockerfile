# syntax=docker/dockerfile:1
#
# Sluice image: one image for every role. The role is the CLI sub-command:
#   docker run IMAGE ingress | worker | migrate | topics create
#
# Two stages: the build stage resolves the locked dependency set with uv and installs the
# project as a regular (non-editable) wheel into /app/.venv; the runtime stage copies only
# that virtualenv, so neither uv nor the source tree ships in the final image.
#
# Every pinned dependency has a manylinux wheel for CPython 3.11 on x86_64, so the build
# needs no compiler. On a platform without wheels for some package (e.g. arm64 for an
# older pin), add `build-essential` to the build stage only.

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install "uv==${UV_VERSION}"

WORKDIR /src

# Dependencies first, from the lock alone: this layer is rebuilt only when
# pyproject.toml or uv.lock change, not on every source edit.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

# Then the project itself (the package list mirrors [tool.hatch.build.targets.wheel]).
COPY README.md ./
COPY base ./base
COPY ingress ./ingress
COPY streams ./streams
COPY connectors ./connectors
COPY schemas ./schemas
COPY sluice ./sluice
COPY devstack ./devstack
RUN uv sync --frozen --no-dev --no-editable \
    && /app/.venv/bin/sluice --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Kafka stream-processing pipeline for payment and partner events" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so orchestrators can enforce runAsNonRoot and volumes can be
# pre-chowned. The home and working directory is the writable state root; the code
# (/app/.venv) stays root-owned and read-only for the service user.
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice \
        --home-dir /var/lib/sluice --no-create-home --shell /usr/sbin/nologin sluice \
    && mkdir -p /var/lib/sluice/state \
    && chown -R sluice:sluice /var/lib/sluice

COPY --from=build /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/sluice \
    SLUICE_STATE_DIR=/var/lib/sluice/state

# The state directory exists in the image owned by the service user, so a fresh named
# volume mounted there inherits that ownership (the worker's RocksDB tables live there).
# No VOLUME instruction: it would give every container of this image (ingress, one-shots)
# an anonymous volume; the compose file mounts a named volume on the worker only.

WORKDIR /var/lib/sluice
USER 10001:10001

# 8080: public listener (webhooks only). 8081: internal listener (internal APIs, admin,
# health, metrics) -- never publish 8081 to the internet.
EXPOSE 8080 8081

ENTRYPOINT ["sluice"]
CMD ["--help"]
