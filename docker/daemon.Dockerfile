# chiploop daemon with the built-in simulator (the default backend).
# Build from the repository root: docker build -f docker/daemon.Dockerfile -t chiploop-daemon .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Large packed messages: keep freed buffers in the heap instead of returning them to the OS each time.
    MALLOC_TRIM_THRESHOLD_=268435456 \
    MALLOC_MMAP_THRESHOLD_=268435456 \
    NUMBA_CACHE_DIR=/var/cache/chiploop/numba \
    CHIPLOOP_ADDRESS=0.0.0.0:50051 \
    CHIPLOOP_BACKEND=sim

RUN groupadd --system --gid 10001 chiploop \
    && useradd --system --uid 10001 --gid chiploop --home-dir /app chiploop

WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
COPY proto ./proto
# The daemon needs no torch: only the base dependencies are installed. The simulator's kernels are
# compiled into numba's cache here, so that a new container serves in seconds, not after a minute
# of compiling (on a host whose CPU differs from the builder's, numba compiles them again).
RUN pip install --no-cache-dir . \
    && mkdir -p /var/cache/chiploop/numba \
    && python -c "from chiploop_server.devices.sim import SimDevice; SimDevice().warm_up()" \
    && chown -R chiploop:chiploop /var/cache/chiploop

USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "chiploop_server", "health"]
ENTRYPOINT ["python", "-m", "chiploop_server"]
CMD ["serve"]
