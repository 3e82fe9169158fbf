# One runtime-only image for the four services; the command picks one:
#   python -m catalog_service | sharing_service | billing_service | gateway
# The build stage installs the lock's runtime half (hash-checked) and builds cloudimg's wheel (its setup.py
# generates the protos' Python code, in an isolated build environment with grpcio-tools); the final stage
# carries that virtual environment only: no compiler, no grpcio-tools, no test or lint tools.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/runtime.txt requirements/runtime.txt
RUN /opt/venv/bin/pip install --require-hashes -r requirements/runtime.txt

COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY third_party/ third_party/
COPY clients/python/ clients/python/
COPY chassis/ chassis/
COPY catalog_service/ catalog_service/
COPY sharing_service/ sharing_service/
COPY billing_service/ billing_service/
COPY gateway/ gateway/
COPY devtools/ devtools/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/cloudimg-*.whl

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin cloudimg
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/cloudimg
EXPOSE 50050 50051 50052 50053
CMD ["python", "-m", "gateway"]
