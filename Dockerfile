# syntax=docker/dockerfile:1
# kullm-chat: one image for the worker, the adapters and `kullm serve`.
#
#   docker build -t kullm-chat .                                  # everything, CPU torch
#   docker build -t kullm-chat:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch
#   docker build -t kullm-chat:telegram --build-arg EXTRAS=telegram .        # bot only, no torch
#
# A try with nothing configured (tiny random model, embedded Valkey under /app/data):
#   docker run --rm -it --init kullm-chat kullm serve
# and in a second terminal: docker exec -it <container> kullm chat
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
# Non-root; the only writable place is the data volume (embedded Valkey, tiny model, caches).
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin kullm \
    && mkdir -p /app/data /app/config \
    && chown kullm:kullm /app/data

# Layers from the least to the most often changed: the above (shared by every image), torch
# (only with its build args), the dependencies (only with pyproject.toml), the project's code.
# The build args are declared here: a different value misses the cache from here on only.
# `all` = worker + telegram + slack. `telegram` or `slack` alone never installs torch.
ARG EXTRAS=all
# torch comes from the PyTorch wheel index so pip never pulls a multi-GB CUDA build by accident;
# the spec is the pin scripts/setup.sh (and so CI) installs.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    case ",${EXTRAS}," in \
      *,all,*|*,worker,*) pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" ;; \
      *) echo "EXTRAS=${EXTRAS}: no torch" ;; \
    esac

# The dependencies alone: the package folders are not there yet, so this builds an empty
# kullm-chat and keeps only what it requires.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/deps/pyproject.toml \
    --mount=type=bind,source=README.md,target=/tmp/deps/README.md \
    cp -r /tmp/deps /tmp/build \
    && pip install "/tmp/build[${EXTRAS}]" \
    && pip uninstall -y kullm-chat \
    && rm -rf /tmp/build

# The project itself (the same `pip install` CI runs, not editable, deps already there).
RUN --mount=type=bind,source=.,target=/tmp/src \
    cp -r /tmp/src /tmp/build \
    && pip install --no-cache-dir --no-deps /tmp/build \
    && rm -rf /tmp/build \
    && kullm --help >/dev/null

COPY --chown=root:root config/kullm.toml /app/config/kullm.toml
WORKDIR /app
ENV KULLM_DATA_DIR=/app/data \
    HF_HOME=/app/data/huggingface \
    XDG_CACHE_HOME=/app/data/cache
VOLUME ["/app/data"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# /metrics, /healthz, /readyz when KULLM_OPS__PORT is set (compose and k8s use 9100).
EXPOSE 9100
# The worker probe; adapter containers override it (compose.yaml, deploy/k8s).
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 \
    CMD ["kullm", "worker", "--check"]
CMD ["kullm", "serve"]
