# Build stage: a virtualenv with every dependency. A C++ compiler for the packages pip may have to build from
# source (implicit has no wheel for every platform; python:3.11-slim has no compiler, so the build stopped there).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build), in its own layer
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# then the dependencies alone, from pyproject.toml: a change to the code or the README reuses this layer. In a
# directory of its own: from / (the base image sets no WORKDIR) setuptools' package discovery walks /proc's links
# back into / without end, and `pip install .` never finished (found by review)
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', *deps])" \
 && pip install --no-cache-dir --no-deps recbole==1.2.1
COPY README.md ./
COPY tidewater ./tidewater
COPY streams ./streams
COPY models ./models
COPY infra ./infra
RUN pip install --no-cache-dir --no-deps .

# Run stage: the virtualenv without the compiler. OpenMP and the C++ runtime for LightGBM and implicit (the
# churn and recommender baselines); torch and faiss bring their own.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libstdc++6 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# not root: the state and registry directories belong to the service user, and a new named volume mounted there
# takes their owner (a volume written by an image before this one is root's: `chown -R 10001` it once)
RUN useradd --system --uid 10001 --home-dir /app --create-home tidewater \
 && mkdir -p /var/lib/tidewater /var/lib/tidewater-registry /var/cache/tidewater-numba \
 && chown tidewater /var/lib/tidewater /var/lib/tidewater-registry /var/cache/tidewater-numba
# numba's compiled churn-summary loop (a few seconds on a worker's first model load; the installed package is
# not writable by the service user, so its cache goes here)
ENV NUMBA_CACHE_DIR=/var/cache/tidewater-numba
USER tidewater
WORKDIR /app
EXPOSE 6066
CMD ["tidewater", "worker"]
