# dreamlite-serve: CPU image by default. The model folder (or device bundle) is mounted, not baked:
#   docker build -t dreamlite-serve .
#   docker run -p 8000:8000 -v /models/DreamLite-mobile:/models/dreamlite:ro \
#       -e DREAMLITE_MODEL=/models/dreamlite dreamlite-serve
# With no model mounted it serves the embedded default (dreamlite-nano).
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU torch wheel first, so the pinned torch==2.13.0 does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY model_runtime ./model_runtime
COPY server ./server
COPY clients ./clients
COPY dreamlite ./dreamlite
RUN pip install --prefix=/install ".[server,export]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 dreamlite
COPY --from=build /usr/local /usr/local
COPY --from=build /install /usr/local
USER dreamlite
ENV DREAMLITE_HOST=0.0.0.0 DREAMLITE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
ENTRYPOINT ["dreamlite", "serve"]
