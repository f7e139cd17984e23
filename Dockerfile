# The creditsweep image: the Ray head, the GPU workers, the sweep driver and optuna-dashboard
# all run it. PyPI's Linux torch wheels carry CUDA; the host's NVIDIA driver comes in through
# the NVIDIA container toolkit (docker-compose.yml reserves the devices).
FROM python:3.11.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/creditsweep
COPY docker/constraints.txt docker/constraints.txt
# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir catalogue trainer spaces search \
    && touch catalogue/__init__.py trainer/__init__.py spaces/__init__.py search/__init__.py \
    && pip install -c docker/constraints.txt ".[dashboard]" \
    && pip uninstall -y creditsweep
COPY catalogue catalogue
COPY trainer trainer
COPY spaces spaces
COPY search search
RUN pip install --no-deps ".[dashboard]" && python -c "import catalogue, trainer, spaces, search.cli"

RUN useradd --create-home --uid 1000 sweeper && mkdir -p /data && chown sweeper /data
USER sweeper
WORKDIR /data
# Ray experiment folders live on the shared volume mounted at /data.
ENV CREDITSWEEP_RAY_DIR=/data/ray \
    RAY_AIR_NEW_OUTPUT=0
CMD ["creditsweep", "--help"]
