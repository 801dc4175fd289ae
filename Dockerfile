# docker build -t hftl . && docker run --rm hftl            (runs the default recipe)
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /hftl
COPY . .
RUN make setup PYTHON=python3
ENV HF_HUB_OFFLINE=1
CMD ["make", "demo"]
