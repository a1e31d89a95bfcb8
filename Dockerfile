# syntax=docker/dockerfile:1
# canvas-sync: one replica per container (state is in memory; scale with replicas).
# Works with a read-only root filesystem: only /tmp must be writable (mount an emptyDir).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/canvas-sync \
 && /opt/canvas-sync/bin/pip install --no-cache-dir /wheels/*.whl \
 && rm -r /opt/canvas-sync/lib/python*/site-packages/canvas_sync/devtools
# (devtools: DynamoDB Local, Redis and replica launchers for development; a replica never needs them)

FROM python:${PYTHON_VERSION}-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin canvas
COPY --from=build /opt/canvas-sync /opt/canvas-sync
ENV PATH=/opt/canvas-sync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CANVAS_EVENT_LOOP=uvloop
USER 10001
EXPOSE 8080
ENTRYPOINT ["canvas-sync"]
CMD ["serve"]
