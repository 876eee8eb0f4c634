"""Streaming relevance worker: Kafka in, Triton's Query-LIFE ensemble, Kafka out."""
