"""The Kafka worker: the pipeline's operators behind Kafka consumers, with Redis beside them."""
