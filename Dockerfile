# The clipsweep worker image: `docker compose up --scale worker=N` runs N of these against one study.
# CPU build of torch by default; for NVIDIA hosts build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweeper ./sweeper
COPY models ./models
COPY conf ./conf
COPY hydra_plugins ./hydra_plugins
RUN pip install --index-url "$TORCH_INDEX" torch \
    && pip install '.[postgres]'

# Hydra writes its run directories here; the study and MLflow runs go to the services.
WORKDIR /work
ENTRYPOINT ["clipsweep"]
CMD ["sweep"]
