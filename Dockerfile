FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . \
 && useradd --create-home taskkernel
USER taskkernel
ENV TASKKERNEL_CONFIG_DIR=/app/config
CMD ["taskkernel", "--help"]
