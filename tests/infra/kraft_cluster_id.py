"""Print a new KRaft cluster id for `kafka-storage format -t`.

Sixteen random bytes in url-safe base64, like Kafka's own `Uuid.randomUuid()`, and, like it,
never one that starts with "-": the storage tool would read that as an option and refuse to
format (one fresh start in 64 failed that way).
"""
import base64
import uuid

while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(cid)
