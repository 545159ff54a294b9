# GPU image: official CUDA PyTorch base, vtrain installed non-editable (its configs ship in the wheel),
# a non-root user, data and outputs as volumes.
#   docker build -t vtrain .
#   docker run --gpus all --shm-size 16g -v /datasets:/data -v $PWD/outputs:/workspace/outputs \
#       vtrain experiment=detr_coco trainer=ddp
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VTRAIN_DATA=/data

RUN useradd --create-home --uid 1000 --user-group vtrain
WORKDIR /src
COPY pyproject.toml README.md ./
COPY conf ./conf
COPY vtrain ./vtrain
# The same install step as the README's: the package and its runtime dependencies (torch comes from the base).
RUN pip install --no-cache-dir . && rm -rf /src

WORKDIR /workspace
RUN chown vtrain:vtrain /workspace
USER 1000
VOLUME ["/data", "/workspace/outputs"]
ENTRYPOINT ["python", "-m", "vtrain"]
