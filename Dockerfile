# One image for the four services; the command picks one:
#   python -m catalog_service | sharing_service | billing_service | gateway
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Generated code, as the Makefile's gen/.stamp rule builds it (without the mypy stubs), put on the
# venv's path by a .pth file.
COPY protos/ protos/
COPY third_party/ third_party/
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && mkdir -p /opt/gen \
 && python -m grpc_tools.protoc -I protos -I third_party/googleapis --python_out=/opt/gen \
      --grpc_python_out=/opt/gen $(find protos -name '*.proto') \
 && echo /opt/gen > "$site/cloudimg_gen.pth"

COPY pyproject.toml ./
COPY chassis/ chassis/
COPY catalog_service/ catalog_service/
COPY sharing_service/ sharing_service/
COPY billing_service/ billing_service/
COPY gateway/ gateway/
COPY cloudimg_cli/ cloudimg_cli/
COPY devtools/ devtools/
RUN pip install --no-deps .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin cloudimg
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/gen /opt/gen
USER 10001:10001
WORKDIR /home/cloudimg
EXPOSE 50050 50051 50052 50053
CMD ["python", "-m", "gateway"]
