FROM python:3.11-slim
# OpenMP for LightGBM and implicit (the churn and recommender baselines); torch and faiss bring their own
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tidewater ./tidewater
COPY streams ./streams
COPY models ./models
COPY infra ./infra
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps recbole==1.2.1
EXPOSE 6066
CMD ["tidewater", "worker"]
