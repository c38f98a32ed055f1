# The cnnsearch image. The Ray head, the workers and the dashboard of docker-compose.yml all run
# it, so every process of a study has the same Python, torch, Optuna and Ray (Ray refuses to mix
# versions in one cluster, and a study should not mix torch releases).
#
#   docker build -t cnnsearch .
#   docker build --build-arg TORCH_SPEC="torch==2.5.1 torchvision==0.20.1" -t cnnsearch .
#
# GPUs: PyPI's Linux torch wheels bundle CUDA, so the base image needs no CUDA; the host needs the
# NVIDIA driver and the NVIDIA Container Toolkit (docker-compose.yml reserves the GPUs).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# torch first, in a layer of its own: it is most of the image and changes least often.
ARG TORCH_SPEC="torch torchvision"
RUN pip install ${TORCH_SPEC}

WORKDIR /opt/cnnsearch
COPY pyproject.toml README.md ./
COPY search ./search
COPY spaces ./spaces
COPY storage ./storage
COPY reports ./reports
RUN pip install .

# Not root: a container escape through a training job should not own the host.
RUN useradd --create-home --uid 1000 cnnsearch \
    && mkdir -p /data /artifacts /work \
    && chown cnnsearch:cnnsearch /data /artifacts /work
USER cnnsearch
WORKDIR /work

CMD ["cnnsearch", "--help"]
