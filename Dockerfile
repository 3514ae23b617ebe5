FROM python:3.11-slim
# bubblewrap and slirp4netns: the engine sandbox (TASKKERNEL_SANDBOX=bubblewrap, the default)
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap slirp4netns \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir '.[server]' \
 && useradd --create-home taskkernel
USER taskkernel
CMD ["taskkernel", "--help"]
