"""Pure batch-in/batch-out operators: the pipeline's logic, free of Kafka and Faust.

The same operators run in-process (`npo demo`, `npo replay`, tests) and
inside the Kafka worker, so both give the same statistics and triggers.
"""
